"""`posttrain check-template`: the project's template passes every check, and for every check a deliberately
broken variant of it fails exactly that check, so no check is one that cannot fail. Each variant is the project
template with a few edits, made here, so the variants follow the template as it changes."""

import pytest

from posttrain import cli
from posttrain.chat_template import load_template
from posttrain.template_checks import CHECKS, check_template, default_tokenizer

# broken variant -> (the one check it fails, words its detail must contain, [(project template text, replacement)])
BROKEN = {
    # markers written `{%+ generation %}`: transformers still masks, but TRL's has_generation_markers misses them,
    # so SFTTrainer(assistant_only_loss=True) swaps the template out (the doc comment's marker goes too)
    "generation_markers": ("generation_markers", "TRL recognizes", [
        ("{% generation %} wraps", "The generation block wraps"), ("{%- generation -%}", "{%+ generation -%}")]),
    # {% generation %} opens before the role header: `<|im_start|>assistant` (and the empty think block) are trained
    "assistant_mask": ("assistant_mask", "trained text is '<|im_start|>assistant", [
        ("{%- generation -%}\n", ""), ('"assistant" -%}\n<|im_start|>', '"assistant" -%}\n{%- generation -%}<|im_start|>')]),
    # assistant turns end with <|endoftext|>, not the tokenizer's eos <|im_end|>: generation never stops
    "eos_trained": ("eos_trained", "end with '<|endoftext|>'", [
        ("<|im_end|>\n{%- endgeneration", "<|endoftext|>\n{%- endgeneration")]),
    # the generation prompt's header has a blank line the rendered turns lack: not a text prefix
    "prefix": ("prefix", "not a text prefix", [
        ("{%- if add_generation_prompt -%}\n<|im_start|>assistant\n", "{%- if add_generation_prompt -%}\n<|im_start|>assistant\n\n")]),
    # /think turns put a blank line after the role header and the generation prompt does not: still a text
    # prefix, but the prompt ends in a `\n` token where the answer has one `\n\n` token
    "prefix_tokens": ("prefix", "a text prefix but not a token prefix", [
        ("</think>\n{% endif -%}\n{%- generation", '</think>\n{% else %}{{ "\\n" }}{% endif -%}\n{%- generation')]),
    # a system flag is read only when enable_thinking is unset: the kwarg wins over the flag
    "mode_flags": ("mode_flags", "renders /no_think, expected /think", [
        ('{%- if "/no_think" in system_text', '{%- if enable_thinking is defined -%}{%- elif "/no_think" in system_text')]),
    # the flag switches the mode but stays in the rendered system instructions
    "flag_not_leaked": ("flag_not_leaked", "renders differently", [
        ('system_text | replace("/no_think", "") | replace("/think", "") | trim', "system_text | trim")]),
    # the system turn uses Llama-3 headers, which this vocabulary spells in bytes
    "special_tokens": ("special_tokens", "not in the tokenizer's vocabulary", [
        ("<|im_start|>system\n", "<|start_header_id|>system<|end_header_id|>\n")]),
    # /no_think turns and the generation prompt write `<think></think>` instead of the empty block
    "empty_think": ("empty_think", "<think></think>", [("<think>\n\n</think>\n{% endif", "<think></think>\n{% endif")]),
    # no branch for tool messages: the template raises on them
    "tool_turns": ("tool_turns", "unsupported role: tool", [
        ("<tool_response>\n{{ text(message.content) }}", '{{ raise_exception("unsupported role: tool") }}')]),
}


def broken_template(name: str) -> str:
    """The project template with the variant's edits (each must apply, or the variant no longer breaks anything)."""
    template = load_template()
    for old, new in BROKEN[name][2]:
        assert old in template, f"{name}: {old!r} is no longer in the project template"
        template = template.replace(old, new)
    return template


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
    assert {check for check, _, _ in BROKEN.values()} == set(CHECKS)


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_template_fails_exactly_its_check(tokenizer, name):
    check, words, _ = BROKEN[name]
    failed = failures(check_template(broken_template(name), tokenizer))
    assert list(failed) == [check], failed
    assert words in failed[check]


def test_token_level_prefix_needs_a_merged_blank_line(tokenizer):
    """prefix_tokens.jinja only fails at token level if "\\n\\n" is one token of the vocabulary (as in Llama-3
    and SmolLM2): the default tokenizer is trained to have it."""
    assert len(tokenizer.encode("a\n\n", add_special_tokens=False)) == 2


def test_tokenizer_without_think_tokens_fails_special_tokens(chatml_tokenizer_dir):
    """A ChatML vocabulary without <think> / </think> (as SmolLM2's): the template is fine, the tokenizer is not."""
    from transformers import AutoTokenizer

    chatml = AutoTokenizer.from_pretrained(chatml_tokenizer_dir)
    failed = failures(check_template(load_template(), chatml))
    assert list(failed) == ["special_tokens"]
    assert "think>' is not in the tokenizer's vocabulary" in failed["special_tokens"]


def run_cli(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_cli_exit_codes(tiny_tokenizer_dir, tmp_path, capsys):
    # a tokenizer directory, checked with its own (the project's) template
    code, out, _ = run_cli(["check-template", str(tiny_tokenizer_dir)], capsys)
    assert code == 0
    assert out.splitlines() == [f"PASS {name}" for name in CHECKS]
    # a template file, checked with that tokenizer
    template = tmp_path / "mode_flags.jinja"
    template.write_text(broken_template("mode_flags"))
    code, out, _ = run_cli(["check-template", str(template), "--tokenizer", str(tiny_tokenizer_dir)], capsys)
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
def test_cli_user_errors_are_one_line(argv, message, tiny_tokenizer_dir, tmp_path, capsys):
    template = tmp_path / "prefix.jinja"
    template.write_text(broken_template("prefix"))
    argv = [a.format(template=template, tokenizer=tiny_tokenizer_dir) for a in argv]
    code, out, err = run_cli(["check-template", *argv], capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1
    assert message in err


def test_project_template_renders_the_smollm3_format(tokenizer):
    """The whole rendering, character for character: the metadata block (dates from kwargs), the mode line, the
    user's instructions with the flag removed (or the mode's default), ChatML turns, the empty think block."""
    conversation = [{"role": "system", "content": "Be brief. /no_think"}, {"role": "user", "content": "2+2?"},
                    {"role": "assistant", "content": "4"}]
    text = tokenizer.apply_chat_template(conversation, tokenize=False, knowledge_cutoff="May 2025",
                                         today_date="02 March 2026")
    assert text == (
        "<|im_start|>system\n## Metadata\n\nKnowledge Cutoff Date: May 2025\nToday Date: 02 March 2026\n"
        "Reasoning Mode: /no_think\n\n## Custom Instructions\n\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n4<|im_end|>\n"
    )
    think = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4", "reasoning_content": "2+2=4"}]
    assert tokenizer.apply_chat_template(think, tokenize=False) == (
        "<|im_start|>system\n## Metadata\n\nKnowledge Cutoff Date: June 2025\nToday Date: 01 January 2026\n"
        "Reasoning Mode: /think\n\n## Custom Instructions\n\nThink step by step in <think> tags, then answer.<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n2+2=4\n</think>\n4<|im_end|>\n"
    )
    # content as a list of parts (the multimodal message format): the text parts, and the flag still counts
    parts = [{"role": "system", "content": [{"type": "text", "text": "Be brief. /no_think"}]},
             {"role": "user", "content": [{"type": "text", "text": "2+2?"}]}, {"role": "assistant", "content": "4"}]
    assert tokenizer.apply_chat_template(parts, tokenize=False, knowledge_cutoff="May 2025",
                                         today_date="02 March 2026") == text
