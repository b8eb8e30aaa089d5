"""Every method in baselines/ (and any file a user adds there) gets the same checks."""

import pytest

from cmbench import conformance
from cmbench import registry as R

ALL = sorted(R.discover())


@pytest.mark.parametrize("name", ALL)
def test_method_conforms(name):
    problems = conformance.check(name)
    assert not problems, "\n".join(problems)


BROKEN = {
    "mutates": (
        "def f(ctx, merged, incoming):\n"
        "    for v in incoming.values():\n"
        "        if v.is_floating_point(): v.mul_(0.5)\n"
        "    return dict(incoming)\n",
        "modified in place",
    ),
    "dtype": ("def f(ctx, merged, incoming):\n    return {k: v.double() for k, v in incoming.items()}\n", "expected"),
    "drops_key": (
        "def f(ctx, merged, incoming):\n    return {k: v for k, v in list(incoming.items())[1:]}\n",
        "keys changed",
    ),
    "random": (
        "import torch\n"
        "def f(ctx, merged, incoming):\n"
        "    g = torch.Generator(); g.seed()  # unseeded: differs run to run\n"
        "    return {k: v + torch.rand((), generator=g) if v.is_floating_point() else v\n"
        "            for k, v in incoming.items()}\n",
        "not deterministic",
    ),
    "int_arith": (
        "def f(ctx, merged, incoming):\n    return {k: v + 1 for k, v in incoming.items()}\n",
        "integer tensor",
    ),
    "peeks_data": (
        "def f(ctx, merged, incoming):\n    ctx.data.current('train')\n    return dict(incoming)\n",
        "declared data_access='none'",
    ),
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_kit_catches_a_broken_method(kind, tmp_path):
    body, expected = BROKEN[kind]
    name = f"broken_{kind}"
    src = (
        "from cmbench.methods import merge_function\n"
        + body.replace("def f", "def _f")
        + f"\nmerge_function({name!r}, paper='test')(_f)\n"
    )
    (tmp_path / f"{name}.py").write_text(src)
    R.discover([tmp_path])
    problems = conformance.check(name)
    assert problems and any(expected in p for p in problems), problems


def test_test_split_is_never_handed_over(tmp_path):
    (tmp_path / "peek_test.py").write_text(
        "from cmbench.methods import Method, register\n"
        "@register\n"
        "class PeekTest(Method):\n"
        "    name = 'peek_test'\n"
        "    data_access = 'current_task'\n"
        "    def merge(self, ctx, merged, incoming, task):\n"
        "        ctx.data.current('test')\n"
        "        return dict(incoming)\n"
    )
    R.discover([tmp_path])
    problems = conformance.check("peek_test")
    assert any("never see test data" in p for p in problems), problems
