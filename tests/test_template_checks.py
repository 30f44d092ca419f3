"""`posttrain check-template`: the project's template passes every check, and for every check a deliberately
broken variant of it fails exactly that check, so no check is one that cannot fail. Each variant is the project
template with a few edits, made here, so the variants follow the template as it changes."""

import itertools
import random
from pathlib import Path

import pytest

from common.errors import UserError
from common.template import is_project_template, load_template, template_path, with_default_instructions
from posttrain import cli
from posttrain.template_checks import CHECKS, check_template, compare_with_reference, default_tokenizer

# broken variant -> (the one check it fails, words its detail must contain, [(project template text, replacement)])
BROKEN = {
    # markers written `{%+ generation %}`: transformers still masks, but TRL's has_generation_markers misses them,
    # so SFTTrainer(assistant_only_loss=True) swaps the template out (the doc comment's marker goes too)
    "generation_markers": ("generation_markers", "TRL recognizes", [
        ("{% generation %} marks", "The generation block marks"), ("{%- generation -%}", "{%+ generation -%}")]),
    # {% generation %} opens before the role header: `<|im_start|>assistant` (and the empty think block) are trained
    "assistant_mask": ("assistant_mask", "trained text is '<|im_start|>assistant", [
        ("{%- generation -%}\n", ""),
        ('"assistant" -%}\n<|im_start|>', '"assistant" -%}\n{%- generation -%}<|im_start|>')]),
    # assistant turns end with <|endoftext|>, not the tokenizer's eos <|im_end|>: generation never stops
    "eos_trained": ("eos_trained", "end with '<|endoftext|>'", [
        ("<|im_end|>\n{%- endgeneration", "<|endoftext|>\n{%- endgeneration")]),
    # the generation prompt's header has a blank line the rendered turns lack: not a text prefix
    "prefix": ("prefix", "not a text prefix", [
        ("{%- if add_generation_prompt -%}\n<|im_start|>assistant\n",
         "{%- if add_generation_prompt -%}\n<|im_start|>assistant\n\n")]),
    # /think turns put a blank line after the role header and the generation prompt does not: still a text
    # prefix, but the prompt ends in a `\n` token where the answer has one `\n\n` token
    "prefix_tokens": ("prefix", "a text prefix but not a token prefix", [
        ("</think>\n{% endif -%}\n{%- generation", '</think>\n{% else %}{{ "\\n" }}{% endif -%}\n{%- generation')]),
    # a system flag is read only when enable_thinking is unset: the kwarg wins over the flag
    "mode_flags": ("mode_flags", "renders /no_think, expected /think", [
        ('{%- if "/no_think" in state.system', '{%- if enable_thinking is defined -%}{%- elif "/no_think" in state.system')]),
    # the flag switches the mode but stays in the rendered system instructions
    "flag_not_leaked": ("flag_not_leaked", "renders differently", [
        ('state.system.replace("/auto_think", "").replace("/no_think", "").replace("/think", "").rstrip()',
         "state.system.rstrip()")]),
    # the system turn uses Llama-3 headers, which this vocabulary spells in bytes
    "special_tokens": ("special_tokens", "not in the tokenizer's vocabulary", [
        ("<|im_start|>system\n", "<|start_header_id|>system<|end_header_id|>\n")]),
    # /no_think turns and the generation prompt write `<think></think>` instead of the empty block
    "empty_think": ("empty_think", "<think></think>", [("<think>\n\n</think>\n{% endif", "<think></think>\n{% endif")]),
    # /auto_think turns without reasoning train on the answer alone: the model never learns to choose a direct answer
    "auto_think": ("auto_think", "expected '<think>\\n\\n</think>\\n\\\\boxed{42}'", [
        ('{%- elif state.auto and not reply.lstrip("\\n").startswith("<think>") -%}', "{%- elif false -%}")]),
    # assistant tool calls are dropped (the basic Llama-3 template's bug): TRL's supports_tool_calling says so
    "tool_calls": ("tool_calls", "supports_tool_calling", [
        ("{%- for call in message.tool_calls or [] -%}", "{%- for call in [] -%}")]),
    # a tool's result is rendered inside a generation block: the model would be trained to write it
    "tool_results_trained": ("tool_calls", "result 'tool says 42' is inside the assistant mask", [
        ('<|im_start|>user\n{{ text(message.content) }}<|im_end|>',
         '<|im_start|>user\n{% if message.role == "tool" %}{% generation %}{{ text(message.content) }}'
         '{% endgeneration %}{% else %}{{ text(message.content) }}{% endif %}<|im_end|>')]),
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
    assert [r.name for r in results] == [*CHECKS, "auto_think"]  # the adaptive mode's check: the template reads it
    assert failures(results) == {}


def test_a_template_without_the_adaptive_mode_is_not_checked_for_it(tokenizer, fixtures):
    results = check_template(served(fixtures).read_text(), tokenizer)  # SmolLM3's own: /think and /no_think only
    assert [r.name for r in results] == list(CHECKS)


def test_every_check_has_a_broken_template():
    assert {check for check, _, _ in BROKEN.values()} == {*CHECKS, "auto_think"}


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
    assert out.splitlines() == [f"PASS {name}" for name in [*CHECKS, "auto_think"]]
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
        (["{template}", "--reference", "no/such.jinja"], "no/such.jinja: no such template file"),
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


# ------------------------------------------------------------------------------------- SmolLM3 fidelity


def served(fixtures) -> Path:
    return fixtures / "templates" / "smollm3_served.jinja"


def published(fixtures) -> Path:
    return fixtures / "templates" / "smollm3_published.jinja"


def random_conversation(rng: random.Random) -> tuple[list[dict], dict]:
    """A conversation as a user might send one: a system message or none, flags anywhere in it, stray whitespace
    and newlines, several turns, reasoning inline, tool results, the kwargs in any combination."""
    words = ["Be brief.", "Answer in French.", "You are a tutor.", "/think", "/no_think", "\n", "  ", "x"]
    messages = []
    if rng.random() < 0.7:
        messages.append({"role": "system", "content": "".join(rng.choices(words, k=rng.randint(0, 5)))})
    for _ in range(rng.randint(1, 3)):
        messages.append({"role": "user", "content": rng.choice(["hi", "2+2?", "\nWhat is 12+30?", "a\n\nb "])})
        if rng.random() < 0.2:
            messages += [{"role": "assistant", "content": ""}, {"role": "tool", "content": rng.choice(["42", "{}"])}]
        reply = rng.choice(["4", "\n\n4", "<think>\n2+2=4\n</think>\n4", "\n<think>\n\n</think>\n4", " 4 \n"])
        messages.append({"role": "assistant", "content": reply})
    if rng.random() < 0.5:
        messages.pop()  # ends on a user (or tool) turn
    kwargs = {"add_generation_prompt": rng.random() < 0.5}
    if rng.random() < 0.7:
        kwargs["enable_thinking"] = rng.random() < 0.5
    if rng.random() < 0.3:
        kwargs["custom_instructions"] = rng.choice(["Use SI units.", "", "Be kind.\n"])
    return messages, kwargs


def test_renders_byte_identical_to_smollm3_as_served(tokenizer, fixtures):
    """The llama.cpp copy of SmolLM3-3B's template (what llama.cpp, vLLM and Ollama serve): identical on the fixed
    set check-template compares and on 500 random conversations."""
    reference = served(fixtures).read_text()
    results = compare_with_reference(load_template(), reference, tokenizer, "served")
    assert [(r.name, r.passed) for r in results] == [("reference", True)], results
    rng = random.Random(0)
    for _ in range(500):
        messages, kwargs = random_conversation(rng)
        ours = tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
        assert ours == tokenizer.apply_chat_template(messages, chat_template=reference, tokenize=False, **kwargs), (
            messages, kwargs)


def test_tools_section_matches_smollm3_as_published(tokenizer, fixtures):
    """SmolLM3-3B's tokenizer-config template: identical wherever tools or /system_override are used; elsewhere
    it differs by exactly its quirk (the system turn left open when there are no tools), which ours does not copy."""
    results = {r.name: r for r in compare_with_reference(load_template(), published(fixtures).read_text(),
                                                         tokenizer, "published")}
    assert results["reference_tools"].passed, results["reference_tools"].detail
    diff = results["reference"].detail.splitlines()
    assert diff[0].startswith("384 of 384 renderings differ")
    assert [line for line in diff if line[:1] in "+-" and not line.startswith(("+++", "---"))] == ["+<|im_end|>"]


def test_tool_calls_render_in_smollm3_format_and_are_trained(tokenizer):
    """An assistant's calls are written as the tools section asks the model to write them, inside the mask; the
    tool's result comes back as a user turn, outside it."""
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"a": "int", "b": "int"}}}]
    messages = [
        {"role": "user", "content": "12+30?"},
        {"role": "assistant", "content": "Adding.", "tool_calls": [
            {"type": "function", "function": {"name": "add", "arguments": {"a": 12, "b": 30}}},
            {"name": "add", "arguments": '{"a": 1, "b": 2}'}]},
        {"role": "tool", "content": "42"},
        {"role": "assistant", "content": "42"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, xml_tools=tools, enable_thinking=False)
    assert "<tools>\n" + str(tools[0]) + "\n</tools>" in text
    assert text.endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\nAdding.\n<tool_call>\n"
        '{"name": "add", "arguments": {"a": 12, "b": 30}}\n</tool_call>\n<tool_call>\n'
        '{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n42<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n42<|im_end|>\n"
    )
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
                                        xml_tools=tools, enable_thinking=False)
    runs = itertools.groupby(zip(out["input_ids"], out["assistant_masks"]), key=lambda p: p[1])
    trained = [tokenizer.decode([i for i, _ in run]) for masked, run in runs if masked]
    assert trained == [
        'Adding.\n<tool_call>\n{"name": "add", "arguments": {"a": 12, "b": 30}}\n</tool_call>\n<tool_call>\n'
        '{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call><|im_end|>',
        "42<|im_end|>",
    ]


def test_default_instructions_are_a_recipe_choice(tokenizer):
    """Short instructions for a tiny vocabulary change that text only; the format stays SmolLM3's."""
    template = with_default_instructions({"think": "Think first."})
    assert is_project_template(template) and is_project_template(load_template())
    user = [{"role": "user", "content": "hi"}]
    think = tokenizer.apply_chat_template(user, chat_template=template, tokenize=False)
    assert "## Custom Instructions\n\nThink first.\n\n<|im_end|>\n" in think
    no_think = tokenizer.apply_chat_template(user, chat_template=template, tokenize=False, enable_thinking=False)
    assert no_think == tokenizer.apply_chat_template(user, chat_template=load_template(), tokenize=False,
                                                      enable_thinking=False)
    # a system message's instructions still win over the defaults
    system = [{"role": "system", "content": "Be brief."}, *user]
    assert "Think first." not in tokenizer.apply_chat_template(system, chat_template=template, tokenize=False)
    with pytest.raises(UserError, match="recipe key 'default_instructions'"):
        with_default_instructions({"thinking": "Think first."})


def test_cli_reference_passes_the_served_template_and_diffs_the_published(tiny_tokenizer_dir, fixtures, capsys):
    code, out, _ = run_cli(["check-template", str(template_path()), "--reference",
                            str(served(fixtures))], capsys)
    assert code == 0
    assert out.splitlines()[-1] == f"PASS reference (384 renderings identical to {served(fixtures)})"
    code, out, _ = run_cli(["check-template", str(tiny_tokenizer_dir), "--reference", str(published(fixtures))],
                           capsys)
    assert code == 1
    assert f"FAIL reference: 384 of 384 renderings differ from {published(fixtures)}; the first (" in out
    assert "\n+<|im_end|>\n" in out
    assert "PASS reference_tools (" not in out  # the tiny tokenizer's own instructions differ from SmolLM3's


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty chat template"),
        ("  \n", "empty chat template"),
        ("{% for m in messages %}\n{{ m.content }}\n{% endfor\n", "line 3: Jinja syntax error"),
        ("{% if x %}{{ y }}", "line 1: Jinja syntax error: Unexpected end of template"),
    ],
)
def test_cli_refuses_an_empty_or_unparsable_template(text, message, tmp_path, capsys):
    template = tmp_path / "t.jinja"
    template.write_text(text)
    code, out, err = run_cli(["check-template", str(template)], capsys)
    assert code == 2 and out == ""
    assert err.startswith(f"error: {template}") and err.count("\n") == 1
    assert message in err


def test_markers_only_in_a_comment_fail_generation_markers(tokenizer):
    """A template whose only `{% generation %}` is inside a comment: TRL's text search finds it, yet nothing is
    masked. The check looks outside comments."""
    template = load_template().replace("{%- generation -%}", "").replace("{%- endgeneration %}", "")
    assert "{% generation %}" in template  # (in the header comment)
    failed = failures(check_template(template, tokenizer))
    assert "generation_markers" in failed and "assistant_mask" in failed
