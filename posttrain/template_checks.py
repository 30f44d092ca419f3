"""`posttrain check-template PATH`: does a chat template, with its tokenizer, give hybrid training what it needs?

Why a separate check: every template bug trains silently. A header inside the assistant mask, an end-of-turn
token outside it, a generation prompt that is not a prefix of the rendered answer, a `/no_think` flag that
leaks into the prompt or loses to `enable_thinking`: the loss still falls and the model learns the wrong thing.
Each check renders real conversations through transformers' `apply_chat_template` (the call TRL makes) and
compares what comes out with the contract in docs/architecture.md.

PATH is a template file (checked with `--tokenizer DIR`, or by default with a byte-level BPE trained on the
spot by `pretrain.tokenizer.train_bpe`) or a tokenizer directory (its own template). One line per check,
`PASS name` / `FAIL name: detail`; exit 0 when every check passes, else 1. `--reference FILE` adds a
comparison with another template (SmolLM3's as served): a fixed, generated set of conversations rendered with
both, and a unified diff of the first that differs.
"""

from __future__ import annotations

import copy
import datetime
import difflib
import itertools
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import UserError
from common.recipe import help_requested, parse_recipe
from common.template import EMPTY_THINK, THINK_CLOSE, THINK_OPEN
from common.tokenizers import load_pretrained_tokenizer


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    detail: str = ""


@dataclass
class CheckTemplateArgs:
    path: str = field(
        metadata={"help": "a chat template file (.jinja) or a tokenizer directory (also: the first argument)"}
    )
    tokenizer: str | None = field(
        default=None,
        metadata={"help": "tokenizer directory to check a template file with; unset: a small byte-level BPE"},
    )
    reference: str | None = field(
        default=None,
        metadata={"help": "a template file (e.g. SmolLM3's as llama.cpp ships it) that PATH must render "
                          "byte-identically on a generated set of conversations; any difference fails"},
    )


# Conversations the checks render. Distinct texts, so each can be found in the rendering.
SYSTEM = "Be brief."
Q1, R1, A1 = "What is 12+30?", "2+0=2, 1+3=4.", "\\boxed{42}"
Q2, R2, A2 = "And 7+8?", "7+8=15.", "\\boxed{15}"
TURNS = [
    {"role": "user", "content": Q1},
    {"role": "assistant", "reasoning_content": R1, "content": A1},
    {"role": "user", "content": Q2},
    {"role": "assistant", "reasoning_content": R2, "content": A2},
]
TOOL_RESULT = "tool says 42"
TOOL_CALL = {"type": "function", "function": {"name": "add", "arguments": {"a": 12, "b": 30}}}
TOOL_TURNS = [
    {"role": "user", "content": Q1},
    {"role": "assistant", "content": "", "tool_calls": [TOOL_CALL]},
    {"role": "tool", "name": "add", "content": TOOL_RESULT},
    {"role": "assistant", "content": A1},
]
TOOLS = [{
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}]
JINJA_COMMENT_RE = re.compile(r"\{#.*?#\}", re.DOTALL)
# Control tokens a template emits: ChatML-style `<|...|>` and the think tags.
SPECIAL_RE = re.compile(r"<\|[^|<>\s]+\|>|</?think>")
# Text for the default tokenizer: enough for a byte-level BPE (the control tokens come from train_bpe itself).
# Each line ends in a blank line so "\n\n" becomes one token, as in real vocabularies: that is where
# token-level prefix bugs show.
BUILTIN_TEXT = [
    f"{line}\n\n"
    for line in (
        "The quick brown fox jumps over the lazy dog while the five boxing wizards jump quickly.",
        "What is 12+30? Add the ones, then the tens: 2+0=2 and 1+3=4, so the answer is 42.",
        "Think step by step, then answer. Answer directly. Be brief and check the result.",
    )
] * 4


def _mode(thinking: bool | None) -> str:
    return "/think" if thinking or thinking is None else "/no_think"


class _Renderer:
    """`apply_chat_template` with the template under test; `enable_thinking=None` leaves the kwarg unset."""

    def __init__(self, template: str, tokenizer):
        self.template, self.tokenizer = template, tokenizer

    def _call(self, messages, thinking, **kwargs):
        if thinking is not None:
            kwargs["enable_thinking"] = thinking
        return self.tokenizer.apply_chat_template(messages, chat_template=self.template, **kwargs)

    def text(self, messages, thinking=None, **kwargs) -> str:
        return self._call(messages, thinking, tokenize=False, **kwargs)

    def ids(self, messages, thinking=None, **kwargs) -> list[int]:
        return list(self._call(messages, thinking, tokenize=True, return_dict=True, **kwargs)["input_ids"])

    def trained_spans(self, messages, thinking=None, **kwargs) -> list[list[int]]:
        """Token ids of each contiguous run of the assistant mask (one run per trained assistant turn)."""
        out = self._call(messages, thinking, tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
                         **kwargs)
        pairs = zip(out["input_ids"], out["assistant_masks"])
        return [[i for i, _ in run] for masked, run in itertools.groupby(pairs, key=lambda p: p[1]) if masked]

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _where(system: str | None, thinking: bool | None) -> str:
    kwarg = "enable_thinking unset" if thinking is None else f"enable_thinking={thinking}"
    return f"{'no system message' if system is None else f'system {system!r}'}, {kwarg}"


def _system(text: str | None) -> list[dict]:
    return [{"role": "system", "content": text}] if text is not None else []


def _short(text: str, limit: int = 70) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _diff(a: str, b: str) -> str:
    """Where two renderings first differ, with a little context."""
    i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"{_short(a[max(0, i - 20): i + 30])} vs {_short(b[max(0, i - 20): i + 30])}"


# Each check returns None when it passes, else one line saying what is wrong.


def check_generation_markers(r: _Renderer) -> str | None:
    """TRL's own test (`has_generation_markers`): SFTTrainer(assistant_only_loss=True) uses the template only
    when this passes, and otherwise swaps in a stock template or refuses to train."""
    from trl.chat_template_utils import has_generation_markers

    # TRL searches the raw text, so a marker inside a {# comment #} passes it and masks nothing.
    if not has_generation_markers(JINJA_COMMENT_RE.sub("", r.template)):
        return "no {% generation %} / {% endgeneration %} markers that TRL recognizes (outside comments)"
    return None


# (system message, enable_thinking) for the mask checks: both modes through the kwarg (the flags have their
# own check), with and without a system message.
MASK_CASES = [(SYSTEM, True), (SYSTEM, False), (None, True), (None, False)]


def _expected_completion(message: dict, thinking: bool) -> str:
    """What an assistant turn trains on, before its end token: in /think the reasoning in a think block, then
    the content; in /no_think the content alone (the empty think block belongs to the prompt)."""
    if thinking and message.get("reasoning_content"):
        return f"{THINK_OPEN}\n{message['reasoning_content']}\n{THINK_CLOSE}\n{message['content']}"
    return message["content"]


def check_assistant_mask(r: _Renderer) -> str | None:
    """The mask covers exactly each assistant turn's completion plus one end-of-turn token: no header, no
    system or user text, no whitespace after the end token."""
    added = set(r.tokenizer.get_added_vocab().values())
    for system, thinking in MASK_CASES:
        where = _where(system, thinking)
        spans = r.trained_spans(_system(system) + TURNS, thinking)
        expected = [_expected_completion(m, thinking) for m in TURNS if m["role"] == "assistant"]
        if len(spans) != len(expected):
            return f"{where}: {len(spans)} trained spans for {len(expected)} assistant turns"
        for n, (span, want) in enumerate(zip(spans, expected), 1):
            body, end = r.decode(span[:-1]), span[-1]
            if body != want or end not in added:
                trained = _short(r.decode(span))
                return f"{where}, assistant turn {n}: trained text is {trained}, expected {_short(want)} + end token"
    return None


def check_eos_trained(r: _Renderer) -> str | None:
    """The token ending every assistant turn is the tokenizer's eos (what generation stops on) and is trained.
    TRL's `is_chat_template_stop_token_trained` only asks for *an* added token at the end of the span."""
    from trl.chat_template_utils import is_chat_template_stop_token_trained

    eos_id = r.tokenizer.eos_token_id
    if eos_id is None:
        return "the tokenizer has no eos token"
    if not is_chat_template_stop_token_trained(r.tokenizer, chat_template=r.template):
        return "TRL's is_chat_template_stop_token_trained: the end-of-turn token is outside the assistant mask"
    for system, thinking in MASK_CASES:
        for span in r.trained_spans(_system(system) + TURNS, thinking):
            if span[-1] != eos_id:
                return (
                    f"{_mode(thinking)}: assistant turns end with {r.decode(span[-1:])!r}, "
                    f"but the tokenizer's eos is {r.tokenizer.eos_token!r}"
                )
    return None


# (system message, enable_thinking) for the prefix check: kwarg, flag, and the two disagreeing.
PROMPT_CASES = [
    (SYSTEM, True), (SYSTEM, False), (None, None), (f"{SYSTEM} /no_think", None), (f"/think {SYSTEM}", False),
]


def check_prefix(r: _Renderer) -> str | None:
    """render(prompt, add_generation_prompt=True) is a prefix of render(prompt + answer), as text and as token
    ids: RL scores and trains completions appended to the rendered prompt, SFT splits prompt from completion."""
    for system, thinking in PROMPT_CASES:
        for cut in (1, 3):  # single turn, and a second turn after a full first one
            prompt, answer = _system(system) + TURNS[:cut], [TURNS[cut]]
            where = f"{_where(system, thinking)}, turn {(cut + 1) // 2}"
            p, full = r.text(prompt, thinking, add_generation_prompt=True), r.text(prompt + answer, thinking)
            if not full.startswith(p):
                return f"{where}: generation prompt is not a text prefix: {_diff(p, full)}"
            p_ids, full_ids = r.ids(prompt, thinking, add_generation_prompt=True), r.ids(prompt + answer, thinking)
            if full_ids[: len(p_ids)] != p_ids:
                return f"{where}: generation prompt is a text prefix but not a token prefix"
    return None


# (system message, enable_thinking, expected mode): the kwarg alone (default /think), and a flag that wins.
MODE_CASES = [
    (None, None, True), (SYSTEM, True, True), (SYSTEM, False, False),
    (f"{SYSTEM} /think", False, True), (f"/think {SYSTEM}", False, True),
    (f"{SYSTEM} /no_think", True, False), ("/no_think", None, False),
]


def _rendered_mode(r: _Renderer, system, thinking) -> str:
    """Which mode a rendering is in, from what the model sees: earlier reasoning kept and an open generation
    prompt (/think), or earlier reasoning dropped and a think block closed in the generation prompt (/no_think)."""
    text = r.text(_system(system) + TURNS[:3], thinking, add_generation_prompt=True)
    reasoning_kept = R1 in text
    prompt_closed = THINK_CLOSE in text.rsplit(Q2, 1)[-1]
    if reasoning_kept != prompt_closed:
        return "/think" if reasoning_kept else "/no_think"
    return (
        f"an inconsistent mode (earlier reasoning {'kept' if reasoning_kept else 'dropped'}, "
        f"generation prompt {'closes' if prompt_closed else 'leaves open'} the think block)"
    )


def check_mode_flags(r: _Renderer) -> str | None:
    """`enable_thinking` picks the mode (default /think); a /think or /no_think flag in the system message
    overrides it (RLVR and evaluation prompts carry the mode that way: GRPO has no per-row kwargs)."""
    for system, thinking, want in MODE_CASES:
        got = _rendered_mode(r, system, thinking)
        if got != _mode(want):
            return f"{_where(system, thinking)}: renders {got}, expected {_mode(want)}"
    return None


# (system message with a flag, the same with the flag deleted, the mode both ask for). SmolLM3 deletes the
# flag's text and strips trailing whitespace only, so a leading flag leaves its space behind.
LEAK_CASES = [
    (f"{SYSTEM} /think", SYSTEM, True), (f"/no_think {SYSTEM}", f" {SYSTEM}", False),
    (f"{SYSTEM}\n/no_think", SYSTEM, False),
]


def check_flag_not_leaked(r: _Renderer) -> str | None:
    """A flag only switches the mode: the rendering equals the one with the flag deleted (the kwarg agreeing),
    so the model never learns to read, or write, the user's flag."""
    for flagged, plain, thinking in LEAK_CASES:
        conversation = TURNS[:3]
        a = r.text(_system(flagged) + conversation, thinking, add_generation_prompt=True)
        b = r.text(_system(plain) + conversation, thinking, add_generation_prompt=True)
        if a != b:
            return f"system {flagged!r} renders differently from {plain!r}: {_diff(a, b)}"
    return None


def check_special_tokens(r: _Renderer) -> str | None:
    """Every control token the template emits is one token of the vocabulary, and the rendered conversation
    tokenizes it as that token each time (a token spelled in bytes is never learned as a unit)."""
    vocab = r.tokenizer.get_vocab()
    for thinking in (True, False):
        messages = _system(SYSTEM) + TURNS
        text, ids = r.text(messages, thinking), r.ids(messages, thinking)
        for token in sorted(set(SPECIAL_RE.findall(text))):
            if token not in vocab:
                return f"{token!r} is not in the tokenizer's vocabulary"
            if r.tokenizer.encode(token, add_special_tokens=False) != [vocab[token]]:
                return f"{token!r} does not tokenize as one token"
            if ids.count(vocab[token]) != text.count(token):
                return f"{token!r}: {text.count(token)} in the text but {ids.count(vocab[token])} as a token"
    return None


def check_empty_think(r: _Renderer) -> str | None:
    """/no_think: every assistant turn and the generation prompt start with the empty think block, so the
    model's own output never opens a think block."""
    for system, thinking in [(SYSTEM, False), (f"{SYSTEM} /no_think", False)]:
        where = _where(system, thinking)
        text = r.text(_system(system) + TURNS, thinking)
        for n, answer in enumerate((A1, A2), 1):
            before = text[: text.find(answer)]
            if not before.endswith(EMPTY_THINK):
                return f"{where}: assistant turn {n}'s content follows {_short(before[-30:])}, not {EMPTY_THINK!r}"
        prompt = r.text(_system(system) + TURNS[:3], thinking, add_generation_prompt=True)
        if not prompt.endswith(EMPTY_THINK):
            return f"{where}: generation prompt ends with {_short(prompt[-30:])}, expected {EMPTY_THINK!r}"
    return None


def check_tool_calls(r: _Renderer) -> str | None:
    """TRL's `supports_tool_calling` (tool name, arguments and result all rendered), and in both modes the
    assistant's tool call is trained while the tool's result (the environment's text) is not."""
    from trl.chat_template_utils import supports_tool_calling

    tokenizer = copy.copy(r.tokenizer)
    tokenizer.chat_template = r.template
    if not supports_tool_calling(tokenizer):
        return "TRL's supports_tool_calling: a tool call's name or arguments, or the tool's result, is not rendered"
    call = TOOL_CALL["function"]
    for thinking in (True, False):
        spans = r.trained_spans(_system(SYSTEM) + TOOL_TURNS, thinking, xml_tools=TOOLS)
        trained = [r.decode(span) for span in spans]
        if not any(call["name"] in text and all(str(v) in text for v in call["arguments"].values()) for text in trained):
            return f"{_mode(thinking)}: the assistant's tool call is not trained (trained: {_short(' | '.join(trained))})"
        if any(TOOL_RESULT in text for text in trained):
            return f"{_mode(thinking)}: the tool's result {TOOL_RESULT!r} is inside the assistant mask"
    return None


def check_auto_think(r: _Renderer) -> str | None:
    """/auto_think (the adaptive mode, checked when the template reads the flag): the generation prompt prefills
    nothing, so the model's first tokens are its choice; a turn with reasoning trains on its think block and
    answer, a turn without on an empty think block and answer (the direct answer it learns to choose). What else
    the mask holds is `assistant_mask`'s business."""
    system = f"{SYSTEM} /auto_think"
    turns = [TURNS[0], {"role": "assistant", "content": A1}, *TURNS[2:]]
    expected = [EMPTY_THINK + A1, _expected_completion(TURNS[3], True)]
    for n, (span, want) in enumerate(zip(r.trained_spans(_system(system) + turns), expected), 1):
        if not r.decode(span[:-1]).endswith(want):
            return f"{system!r}, assistant turn {n}: trained text is {_short(r.decode(span))}, expected {_short(want)}"
    prompt = r.text(_system(system) + turns[:3], add_generation_prompt=True)
    if prompt.rstrip().endswith((THINK_OPEN, THINK_CLOSE)):
        return f"{system!r}: the generation prompt prefills a think tag ({_short(prompt[-30:])}): the choice is made for the model"
    return None


CHECKS = {
    "generation_markers": check_generation_markers,
    "assistant_mask": check_assistant_mask,
    "eos_trained": check_eos_trained,
    "prefix": check_prefix,
    "mode_flags": check_mode_flags,
    "flag_not_leaked": check_flag_not_leaked,
    "special_tokens": check_special_tokens,
    "empty_think": check_empty_think,
    "tool_calls": check_tool_calls,
}


# The conversations `--reference` renders: every system message shape, flag and kwarg, the assistant's reasoning
# inline in its content (the form every copy of the SmolLM3 template reads), leading newlines, tool results.
REFERENCE_SYSTEMS = [None, "", SYSTEM, f"{SYSTEM} /no_think", "/think", "/no_think", f"  {SYSTEM}\n/think\n",
                     "/think /no_think both"]
REFERENCE_CONVERSATIONS = [
    [{"role": "user", "content": Q1}],
    [{"role": "user", "content": Q1}, {"role": "assistant", "content": f"\n\n{A1}"}],
    [{"role": "user", "content": Q1}, {"role": "assistant", "content": f"<think>\n{R1}\n</think>\n{A1}"},
     {"role": "user", "content": Q2}, {"role": "assistant", "content": A2}],
    [{"role": "user", "content": Q1}, {"role": "assistant", "content": ""},
     {"role": "tool", "content": TOOL_RESULT}, {"role": "assistant", "content": A1}],
]
REFERENCE_KWARGS = [{}, {"custom_instructions": "Answer in French."}]
# What SmolLM3's published template adds: tools in the system turn, and a system message taken verbatim.
REFERENCE_TOOL_KWARGS = [{"xml_tools": TOOLS}, {"python_tools": ["def add(a: int, b: int) -> int: ..."]},
                         {"xml_tools": TOOLS, "python_tools": ["def add(a: int, b: int) -> int: ..."]}]


def _reads(template: str, name: str) -> bool:
    return re.search(rf"\b{name}\b", template) is not None


def reference_cases(reference: str) -> dict[str, list[tuple[str, list[dict], bool | None, dict]]]:
    """(description, messages, enable_thinking, kwargs) per comparison: the core format, and tools if the reference reads them.
    A reference that dates the system turn itself (`strftime_now`) is matched by passing today's date to ours
    as the `today_date` kwarg."""
    date = {"today_date": datetime.date.today().strftime("%d %B %Y")} if _reads(reference, "strftime_now") else {}
    groups = {"reference": (REFERENCE_SYSTEMS, REFERENCE_KWARGS)}
    if _reads(reference, "xml_tools") or _reads(reference, "python_tools"):
        groups["reference_tools"] = ([*REFERENCE_SYSTEMS, "/system_override Reply in JSON."], REFERENCE_TOOL_KWARGS)
    cases = {}
    for group, (systems, kwargs_list) in groups.items():
        cases[group] = [
            (f"{_where(system, thinking)}, {len(conversation)} turns, add_generation_prompt={prompt}"
             + "".join(f", {key}" for key in kwargs),
             _system(system) + conversation, thinking,
             {**kwargs, **date, "add_generation_prompt": prompt})
            for system, conversation, thinking, kwargs, prompt in itertools.product(
                systems, REFERENCE_CONVERSATIONS, (None, True, False), kwargs_list, (False, True))
        ]
    return cases


def compare_with_reference(template: str, reference: str, tokenizer, name: str) -> list[CheckResult]:
    """One result per group of `reference_cases`: byte-identical everywhere, or the count of renderings that
    differ and a unified diff (reference first) of the first one."""
    ours, theirs = _Renderer(template, tokenizer), _Renderer(reference, tokenizer)
    results = []
    for group, cases in reference_cases(reference).items():
        differ = []
        for where, messages, thinking, kwargs in cases:
            want, got = theirs.text(messages, thinking, **kwargs), ours.text(messages, thinking, **kwargs)
            if want != got:
                differ.append((where, want, got))
        if not differ:
            results.append(CheckResult(group, True, f"{len(cases)} renderings identical to {name}"))
            continue
        where, want, got = differ[0]
        diff = difflib.unified_diff(want.splitlines(), got.splitlines(), name, "checked template", lineterm="", n=1)
        results.append(CheckResult(group, False, f"{len(differ)} of {len(cases)} renderings differ from {name}; "
                                                 f"the first ({where}):\n" + "\n".join(diff)))
    return results


def check_template(template: str, tokenizer) -> list[CheckResult]:
    """Run every check of `template` with `tokenizer`; one result per check, in a fixed order."""
    renderer = _Renderer(template, tokenizer)
    results = []
    optional = {"auto_think": check_auto_think} if "/auto_think" in template else {}
    for name, check in {**CHECKS, **optional}.items():
        try:
            problem = check(renderer)
        except Exception as e:  # a broken template fails in any way (syntax, undefined, raise_exception)
            problem = f"rendering failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        results.append(CheckResult(name, problem is None, problem or ""))
    return results


def default_tokenizer():
    """A byte-level BPE with the project's control tokens, trained in about a second on built-in text."""
    from pretrain.tokenizer import train_bpe

    with tempfile.TemporaryDirectory() as tmp:
        return train_bpe([], vocab_size=400, output_dir=tmp, texts=BUILTIN_TEXT)


def load_tokenizer(path: str | Path):
    path = Path(path)
    if not path.is_dir():  # checked here so a typo never turns into a hub lookup
        raise UserError(f"{path}: no such tokenizer directory")
    return load_pretrained_tokenizer(path)


def read_template(path: Path) -> str:
    """A template file's text; an unreadable or empty file is a user error, not a check that passes."""
    if not path.is_file():
        raise UserError(f"{path}: no such template file")
    try:
        template = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file (expected a Jinja chat template)") from None
    if not template.strip():
        raise UserError(f"{path}: empty chat template")
    return template


def check_syntax(template: str, tokenizer, source: str) -> None:
    """Compile the template as transformers does (the same Jinja environment TRL renders with); a syntax error
    is reported with its line, before any check renders it."""
    from jinja2 import TemplateSyntaxError

    try:
        tokenizer.apply_chat_template([{"role": "user", "content": Q1}], chat_template=template, tokenize=False)
    except TemplateSyntaxError as e:
        raise UserError(f"{source}, line {e.lineno}: Jinja syntax error: {e.message}") from None
    except Exception:  # a template that compiles but fails to render is for the checks to report
        pass


def load_target(path: str | Path, tokenizer_dir: str | Path | None = None) -> tuple[str, object]:
    """(template, tokenizer) for PATH: a tokenizer directory with its own template, or a template file with
    `tokenizer_dir` (default: `default_tokenizer()`)."""
    path = Path(path)
    if path.is_dir():
        if tokenizer_dir is not None:
            raise UserError(f"{path}: --tokenizer applies to a template file, not to a tokenizer directory")
        tokenizer = load_tokenizer(path)
        template = tokenizer.chat_template
        if isinstance(template, dict):  # named variants: TRL trains with the default one
            template = template.get("default")
        if not template or not template.strip():
            raise UserError(f"{path}: the tokenizer has no chat template")
        check_syntax(template, tokenizer, f"{path} (its chat template)")
        return template, tokenizer
    if not path.exists():
        raise UserError(f"{path}: no such template file or tokenizer directory")
    template = read_template(path)
    tokenizer = load_tokenizer(tokenizer_dir) if tokenizer_dir is not None else default_tokenizer()
    check_syntax(template, tokenizer, str(path))
    return template, tokenizer


def main(argv: list[str]) -> int:
    argv = list(argv)
    if help_requested(argv, [CheckTemplateArgs], "posttrain check-template"):
        return 0
    if argv and not argv[0].startswith("-"):  # PATH as the first positional argument
        argv = ["--path", argv[0], *argv[1:]]
    (args,) = parse_recipe([CheckTemplateArgs], argv)
    template, tokenizer = load_target(args.path, args.tokenizer)
    results = check_template(template, tokenizer)
    if args.reference is not None:
        reference = read_template(Path(args.reference))
        check_syntax(reference, tokenizer, args.reference)
        results += compare_with_reference(template, reference, tokenizer, args.reference)
    for result in results:
        if result.passed:
            print(f"PASS {result.name}" + (f" ({result.detail})" if result.detail else ""))
        else:
            print(f"FAIL {result.name}: {result.detail}")
    return 0 if all(result.passed for result in results) else 1
