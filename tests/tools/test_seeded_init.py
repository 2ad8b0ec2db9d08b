"""--seed fixes a training tool's initial weights, not only its data order and dropout.

torch seeds its default generator from the clock at start-up, and importing the packages draws from it,
so a model built before any seeding starts from different weights in every process: the quick report's
GPT, BERT and vision figures moved between two runs of the same commit for that reason. The loss of the
first step is computed on the initial weights and the first batch (fixed by the seed), so two runs of a
tool with one seed must log the same first loss, in the same process one after the other.
"""

import json

import numpy as np
import pytest
from crate_text import get_tokenizer, shakespeare_plays, write_tokens

COMMON = ["--steps", "1", "--micro-batch", "4", "--eval-batches", "1", "--log-every", "1", "--wandb", "disabled",
          "--progress", "off", "--warmup-steps", "1", "--eval-every", "0"]


@pytest.fixture(scope="module")
def token_dir(tmp_path_factory):
    tok = get_tokenizer("gpt2")
    d = tmp_path_factory.mktemp("tokens")
    ids = np.array(tok.encode(shakespeare_plays()[3][1][:6000]) + [tok.eot_token])
    write_tokens(d / "train.bin", ids[:-300], tok.name, tok.n_ids)
    write_tokens(d / "val.bin", ids[-300:], tok.name, tok.n_ids)
    (d / "meta.json").write_text(json.dumps({"tokenizer": tok.name}))
    return d


def first_loss(tool, name, args, out, seed):
    tool(name).main([*args, *COMMON, "--seed", str(seed), "--out-dir", str(out)])
    return json.loads((out / "train_result.json").read_text())["loss"]  # one step: the loss at the start


@pytest.mark.parametrize(
    "name, args",
    [
        ("train_vision", ["--model", "crate-tiny-test", "--train-size", "16", "--eval-size", "8"]),
        ("pretrain_gpt", ["--block-size", "16", "--sample-tokens", "1"]),
        ("pretrain_bert", ["--max-positions", "18"]),
    ],
)
def test_one_seed_gives_one_initialisation(tool, token_dir, tmp_path, monkeypatch, name, args):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    if name != "train_vision":
        args = [*args, "--data", str(token_dir)]
    a = first_loss(tool, name, args, tmp_path / "a", seed=3)
    b = first_loss(tool, name, args, tmp_path / "b", seed=3)
    c = first_loss(tool, name, args, tmp_path / "c", seed=4)
    assert a == b  # same weights, same batch
    assert a != c  # another seed: other weights (and batch)
