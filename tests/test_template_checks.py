"""`posttrain check-template`: the project's template passes every check, and for every check a deliberately
broken template (tests/data/broken_templates/) fails exactly that check, so no check is one that cannot fail."""

from pathlib import Path

import pytest

from posttrain import cli
from posttrain.chat_template import load_template
from posttrain.template_checks import CHECKS, check_template, default_tokenizer

BROKEN_DIR = Path(__file__).parent / "data" / "broken_templates"
# broken template -> (the one check it fails, words its detail must contain)
BROKEN = {
    "generation_markers.jinja": ("generation_markers", "TRL recognizes"),
    "assistant_mask.jinja": ("assistant_mask", "trained text is '<|im_start|>assistant"),
    "eos_trained.jinja": ("eos_trained", "end with '<|endoftext|>'"),
    "prefix.jinja": ("prefix", "not a text prefix"),
    "prefix_tokens.jinja": ("prefix", "a text prefix but not a token prefix"),
    "mode_flags.jinja": ("mode_flags", "renders /no_think, expected /think"),
    "flag_not_leaked.jinja": ("flag_not_leaked", "renders differently"),
    "special_tokens.jinja": ("special_tokens", "not in the tokenizer's vocabulary"),
    "empty_think.jinja": ("empty_think", "<think></think>"),
    "tool_turns.jinja": ("tool_turns", "unsupported role: tool"),
}


@pytest.fixture(scope="module")
def tokenizer():
    return default_tokenizer()


def failures(results) -> dict[str, str]:
    return {r.name: r.detail for r in results if not r.passed}


def test_project_template_passes_every_check(tokenizer):
    results = check_template(load_template(), tokenizer)
    assert [r.name for r in results] == list(CHECKS)
    assert failures(results) == {}


def test_every_check_has_a_broken_template():
    assert sorted(p.name for p in BROKEN_DIR.glob("*.jinja")) == sorted(BROKEN)
    assert {check for check, _ in BROKEN.values()} == set(CHECKS)


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_template_fails_exactly_its_check(tokenizer, name):
    check, words = BROKEN[name]
    failed = failures(check_template((BROKEN_DIR / name).read_text(), tokenizer))
    assert list(failed) == [check], failed
    assert words in failed[check]


def test_token_level_prefix_needs_a_merged_blank_line(tokenizer):
    """prefix_tokens.jinja only fails at token level if "\\n\\n" is one token of the vocabulary (as in Llama-3
    and SmolLM2): the default tokenizer is trained to have it."""
    assert len(tokenizer.encode("a\n\n", add_special_tokens=False)) == 2


def test_tokenizer_without_think_tokens_fails_special_tokens(shared_data):
    """A real vocabulary (SmolLM2's) without <think> / </think>: the template is fine, the tokenizer is not."""
    from transformers import AutoTokenizer

    smollm2 = AutoTokenizer.from_pretrained(shared_data / "tokenizers" / "smollm2")
    failed = failures(check_template(load_template(), smollm2))
    assert list(failed) == ["special_tokens"]
    assert "think>' is not in the tokenizer's vocabulary" in failed["special_tokens"]


def run_cli(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_cli_exit_codes(tiny_tokenizer_dir, capsys):
    # a tokenizer directory, checked with its own (the project's) template
    code, out, _ = run_cli(["check-template", str(tiny_tokenizer_dir)], capsys)
    assert code == 0
    assert out.splitlines() == [f"PASS {name}" for name in CHECKS]
    # a template file, checked with that tokenizer
    code, out, _ = run_cli(
        ["check-template", str(BROKEN_DIR / "mode_flags.jinja"), "--tokenizer", str(tiny_tokenizer_dir)], capsys
    )
    assert code == 1
    fails = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 1 and fails[0].startswith("FAIL mode_flags: ")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["no/such.jinja"], "no/such.jinja: no such template file or tokenizer directory"),
        (["{template}", "--tokenizer", "no/such_dir"], "no/such_dir: no such tokenizer directory"),
        (["{tokenizer}", "--tokenizer", "{tokenizer}"], "--tokenizer applies to a template file"),
        ([], "missing required recipe key 'path'"),
    ],
)
def test_cli_user_errors_are_one_line(argv, message, tiny_tokenizer_dir, capsys):
    template = str(BROKEN_DIR / "prefix.jinja")
    argv = [a.format(template=template, tokenizer=tiny_tokenizer_dir) for a in argv]
    code, out, err = run_cli(["check-template", *argv], capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1
    assert message in err
