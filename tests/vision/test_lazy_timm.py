"""crate_vision does not import timm (about two seconds) but its timm names still register, whichever of
the two is imported first (issue 18: tools import heavy libraries only when needed)."""

import subprocess
import sys

import pytest

ORDERS = {
    "crate_vision first": "import crate_vision, sys; assert 'timm' not in sys.modules; import timm",
    "timm first": "import timm, crate_vision",
    # transformers asks importlib.util.find_spec("timm") before importing it: that must not spend the hook
    "availability check first": "import crate_vision, importlib.util; importlib.util.find_spec('timm'); import timm",
}


@pytest.mark.parametrize("imports", ORDERS.values(), ids=ORDERS.keys())
def test_timm_names_register_in_either_order(imports):
    code = imports + "; print(sorted(timm.list_models('crate_small*'))); timm.create_model('crate_tiny_test')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "crate_small_patch16_224" in out.stdout


def test_tool_help_imports_neither_timm_nor_torchvision():
    code = (
        "import runpy, sys; sys.argv = ['train_vision.py', '--help']\n"
        "try:\n    runpy.run_path('tools/train_vision.py', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print(sorted(m for m in ('timm', 'torchvision', 'deepspeed', 'wandb', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
