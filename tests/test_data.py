"""Data adapters and validation: modes and the /no_think derivation, the GSM8K and MATH-500 adapters on
fixtures in their formats (as jsonl files, a Hub-style dataset folder and a `save_to_disk` folder), Hub ids
offline, exact mixture shares, overlong rows counted per mode, TRL accepting the datasets, and one line naming
file, row and field for every kind of bad input."""

import json
import logging
import re

import pytest

from common.errors import UserError
from posttrain import data, task
from posttrain.data import DataError

BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def write_jsonl(path, rows):
    """Rows are dicts (written as JSON) or raw strings (written as they are: blank lines, broken JSON)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def user(text):
    return {"role": "user", "content": text}


def assistant(text, reasoning=None):
    return {"role": "assistant", "content": text, **({"reasoning_content": reasoning} if reasoning else {})}


def gold(question):
    """The answer of a bare `What is a+b?` question, computed here; None for word problems."""
    match = re.fullmatch(r"What is (\d+)([+-])(\d+)\?", question)
    if not match:
        return None
    a, op, b = match.groups()
    return str(int(a) + int(b) if op == "+" else int(a) - int(b))


def gsm8k_final(answer):
    return answer.split("####")[-1].strip().replace(",", "")


# ---------------------------------------------------------------------------------------- conversations


def test_arithmetic_conversations_hit_the_no_think_share_and_drop_reasoning_there():
    sources = [{"name": "arithmetic", "rows": 200, "levels": [2, 3]}]
    ds = data.load_conversations(sources, no_think_fraction=0.3, seed=0)
    assert ds.column_names == ["messages", "mode", "where", "chat_template_kwargs"] and len(ds) == 200
    assert ds["mode"].count("no_think") == 60
    for row in ds:
        think = row["mode"] == "think"
        # generated rows bring no tools or instructions of their own
        assert row["chat_template_kwargs"] == {"enable_thinking": think, "xml_tools": None, "python_tools": None,
                                               "custom_instructions": None}
        question, reply = row["messages"]
        assert question["role"] == "user" and BOXED.fullmatch(reply["content"])
        assert gold(question["content"]) in (None, BOXED.fullmatch(reply["content"]).group(1))
        assert bool(reply["reasoning_content"]) == think
    again = [data.load_conversations(sources, no_think_fraction=0.3, seed=seed) for seed in (0, 1)]
    assert data.dataset_fingerprint(ds) == data.dataset_fingerprint(again[0])
    assert data.dataset_fingerprint(ds) != data.dataset_fingerprint(again[1])


def test_rendered_modes_with_the_template(tiny_tokenizer):
    ds = data.load_conversations([{"name": "arithmetic", "rows": 10}], no_think_fraction=0.5, seed=0)
    traces = {p.question: p.reasoning for p in task.generate("train", 10, seed=0)}
    for row in ds:
        text = tiny_tokenizer.apply_chat_template(row["messages"], tokenize=False, **row["chat_template_kwargs"])
        trace = traces[row["messages"][0]["content"]]
        reply = text.split("<|im_start|>assistant\n")[1]
        if row["mode"] == "think":
            assert reply.startswith(f"<think>\n{trace}\n</think>\n\\boxed{{")
        else:
            assert reply.startswith("<think>\n\n</think>\n\\boxed{") and trace not in text


def test_user_messages_keep_their_mode_and_reasoning_rows_are_derived(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [user("2+2?"), assistant("4", "two and two")], "mode": "think"},
        {"messages": [user("3+3?"), assistant("<think>\nthree and three\n</think>\n6")]},
        {"messages": [{"role": "system", "content": "Be brief."}, user("hi"), assistant("hello")]},
        {"messages": [user("5+5?"), assistant("10")], "mode": "no_think"},
    ])
    for fraction, derived_mode in ((1.0, "no_think"), (0.0, "think")):
        ds = data.load_conversations([{"name": "messages", "path": path}], no_think_fraction=fraction, seed=0)
        assert ds["mode"] == ["think", derived_mode, "no_think", "no_think"]
        row = ds[1]["messages"][1]
        assert row["content"] == "6"  # the final answer is kept in both versions
        assert row["reasoning_content"] == ("three and three" if derived_mode == "think" else None)
        assert ds[0]["messages"][1]["reasoning_content"] == "two and two"


def test_gsm8k_train_rows_become_think_and_no_think_conversations(fixtures):
    path = str(fixtures / "gsm8k" / "train.jsonl")
    ds = data.load_conversations([{"name": "gsm8k", "path": path}], no_think_fraction=0.5, seed=0)
    originals = [json.loads(line) for line in open(path)]
    assert len(ds) == len(originals) == 8 and ds["mode"].count("think") == 4
    for row, original in zip(ds, originals):
        question, reply = row["messages"]
        assert question["content"] == original["question"]
        assert reply["content"] == f"The answer is \\boxed{{{gsm8k_final(original['answer'])}}}."
        if row["mode"] == "think":
            assert "<<" not in reply["reasoning_content"] and "####" not in reply["reasoning_content"]
            assert reply["reasoning_content"].split("\n")[0] in re.sub(r"<<[^>]*>>", "", original["answer"])
        else:
            assert reply["reasoning_content"] is None
    assert ds[0]["messages"][1]["content"] == "The answer is \\boxed{36}."  # Mia's apples


def test_trl_sft_trains_on_the_right_span_and_drops_no_row(tmp_path, tiny_model_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    ds = data.load_conversations([{"name": "arithmetic", "rows": 8}], no_think_fraction=0.5, seed=0)
    args = SFTConfig(
        output_dir=str(tmp_path), max_steps=1, assistant_only_loss=True, bf16=False,
        activation_checkpointing=False, report_to="none", save_strategy="no", max_length=512,
    )
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model_dir), args=args,
                         train_dataset=ds, processing_class=tiny_tokenizer)
    assert len(trainer.train_dataset) == len(ds)
    for row, tokenized in zip(ds, trainer.train_dataset):
        labels = zip(tokenized["input_ids"], tokenized["labels"])
        trained = tiny_tokenizer.decode([token for token, label in labels if label != -100])
        reply = row["messages"][1]
        if row["mode"] == "think":
            assert trained == f"<think>\n{reply['reasoning_content']}\n</think>\n{reply['content']}<|im_end|>"
        else:
            assert trained == f"{reply['content']}<|im_end|>"


ADD_TOOL = {"type": "function", "function": {"name": "add", "description": "Add two integers.",
                                             "parameters": {"a": "int", "b": "int"}}}


def tool_row(mode: str, layout: str) -> dict:
    """A tool-calling conversation: the assistant calls `add`, the tool answers, the assistant answers. Tools
    and mode at the top level, or in SmolTalk2's `chat_template_kwargs`."""
    think = "<think>\nI need to add.\n</think>\n" if mode == "think" else ""
    call = {"type": "function", "function": {"name": "add", "arguments": {"a": 12, "b": 30}}}
    messages = [user("What is 12+30?"), {"role": "assistant", "content": think, "tool_calls": [call]},
                {"role": "tool", "content": "tool says 42"},
                assistant(("<think>\nThe tool says 42.\n</think>\n" if think else "") + "It is 42.")]
    if layout == "top":
        return {"messages": messages, "mode": mode, "xml_tools": [ADD_TOOL]}
    return {"messages": messages, "chat_template_kwargs": {"xml_tools": [ADD_TOOL], "enable_thinking": mode == "think"}}


def test_trl_sft_trains_tool_calls_and_not_tool_results(tmp_path, tiny_model_dir, tiny_tokenizer):
    """SFT on tool-calling conversations: each row renders with its tools in the system turn, the assistant's
    calls (and reasoning, in /think) are trained, the tool's result is not."""
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    rows = [tool_row(mode, layout) for mode in ("think", "no_think") for layout in ("top", "nested")]
    ds = data.load_conversations([{"name": "messages", "path": write_jsonl(tmp_path / "tools.jsonl", rows)}],
                                 no_think_fraction=0.5, seed=0)
    assert sorted(ds["mode"]) == ["no_think", "no_think", "think", "think"]
    args = SFTConfig(output_dir=str(tmp_path), max_steps=1, assistant_only_loss=True, bf16=False,
                     activation_checkpointing=False, report_to="none", save_strategy="no", max_length=1024)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model_dir), args=args,
                         train_dataset=ds, processing_class=tiny_tokenizer)
    assert len(trainer.train_dataset) == len(ds)
    call = '<tool_call>\n{"name": "add", "arguments": {"a": 12, "b": 30}}\n</tool_call><|im_end|>'
    for row, tokenized in zip(ds, trainer.train_dataset):
        text = tiny_tokenizer.decode(tokenized["input_ids"])
        assert "<tools>\n" + str(ADD_TOOL) + "\n</tools>" in text and "<|im_start|>user\ntool says 42<|im_end|>" in text
        trained = tiny_tokenizer.decode([t for t, label in zip(tokenized["input_ids"], tokenized["labels"]) if label != -100])
        if row["mode"] == "think":
            assert trained == f"<think>\nI need to add.\n</think>\n{call}<think>\nThe tool says 42.\n</think>\nIt is 42.<|im_end|>"
        else:
            assert trained == f"{call}It is 42.<|im_end|>"


# ------------------------------------------------------------------------------------------ preferences


def test_arithmetic_pairs_reject_wrong_answers_and_mode_violations():
    ds = data.load_preferences([{"name": "arithmetic", "rows": 200}], no_think_fraction=0.5, seed=0)
    assert ds.column_names == ["prompt", "chosen", "rejected", "mode", "where", "chat_template_kwargs"]
    assert ds["mode"].count("no_think") == 100
    kinds = set()
    for row in ds:
        (prompt,), (chosen,), (rejected,) = row["prompt"], row["chosen"], row["rejected"]
        assert prompt["role"] == "user" and chosen["role"] == rejected["role"] == "assistant"
        think = row["mode"] == "think"
        assert row["chat_template_kwargs"] == {"enable_thinking": think}
        assert bool(chosen["reasoning_content"]) == think and "<think>" not in chosen["content"]
        assert gold(prompt["content"]) in (None, BOXED.fullmatch(chosen["content"]).group(1))
        if BOXED.search(rejected["content"]).group(1) != BOXED.search(chosen["content"]).group(1):
            kinds.add("wrong answer")
            assert rejected["reasoning_content"] == chosen["reasoning_content"]
        elif think:
            kinds.add("no reasoning in /think")
            assert rejected["reasoning_content"] is None and "<think>" not in rejected["content"]
        else:
            kinds.add("think block in /no_think")
            assert rejected["content"].startswith("<think>\n") and rejected["reasoning_content"] is None
    assert kinds == {"wrong answer", "no reasoning in /think", "think block in /no_think"}


def test_gsm8k_model_solutions_give_right_vs_wrong_pairs(fixtures):
    path = str(fixtures / "gsm8k" / "example_model_solutions.jsonl")
    ds = data.load_preferences([{"name": "gsm8k_pairs", "path": path}], no_think_fraction=0.5, seed=0)
    truth = {}
    for line in open(path):
        row = json.loads(line)
        truth[row["question"]] = row["ground_truth"].strip().split("\n")[-1].removeprefix("A:").strip().replace(",", "")
    # right x wrong per question: 2x2, 2x1 (one solution never answers), 3x1, 2x2 (1,500 = 1500 is right)
    assert len(ds) == 4 + 2 + 3 + 4 and abs(ds["mode"].count("no_think") - len(ds) / 2) <= 0.5
    for row in ds:
        right = BOXED.search(row["chosen"][0]["content"]).group(1)
        wrong = BOXED.search(row["rejected"][0]["content"]).group(1)
        assert right == truth[row["prompt"][0]["content"]] != wrong
        for reply in (row["chosen"][0], row["rejected"][0]):
            if row["mode"] == "think":
                assert reply["reasoning_content"] and "<<" not in reply["reasoning_content"]
            else:
                assert reply["reasoning_content"] is None


def test_user_pairs_and_trl_dpo_tokenization(tmp_path, tiny_model_dir, tiny_tokenizer):
    from trl import DPOConfig, DPOTrainer

    path = write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": "2+2?", "chosen": "<think>\ntwo and two\n</think>\n4", "rejected": "<think>\nhmm\n</think>\n5"},
        {"prompt": [user("3+3?")], "chosen": [assistant("6")], "rejected": "<think>\nthree\n</think>\n6"},
    ])
    ds = data.load_preferences([{"name": "preferences", "path": path}], no_think_fraction=0.5, seed=0)
    assert ds["mode"] == ["think", "no_think"]
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), bf16=False, activation_checkpointing=False, report_to="none")
    tokenized = DPOTrainer(model=str(tiny_model_dir), args=args, train_dataset=ds,
                           processing_class=tiny_tokenizer).train_dataset
    decoded = [(tiny_tokenizer.decode(r["chosen_ids"]), tiny_tokenizer.decode(r["rejected_ids"])) for r in tokenized]
    # the SmolLM3 format ends every turn with "<|im_end|>\n"; DPO keeps the newline with the completion
    assert decoded[0] == ("<think>\ntwo and two\n</think>\n4<|im_end|>\n", "<think>\nhmm\n</think>\n5<|im_end|>\n")
    # /no_think: the template's empty think block is prompt; the rejected answer thinks anyway
    assert tiny_tokenizer.decode(tokenized[1]["prompt_ids"]).endswith("assistant\n<think>\n\n</think>\n")
    assert decoded[1] == ("6<|im_end|>\n", "<think>\nthree\n</think>\n6<|im_end|>\n")


# --------------------------------------------------------------------------------------------- prompts


def test_prompts_carry_the_mode_flag_gold_answers_and_levels(fixtures):
    gsm8k, math500 = fixtures / "gsm8k" / "test.jsonl", fixtures / "math500" / "test.jsonl"
    sources = [
        {"name": "arithmetic", "rows": 30, "split": "test"},
        {"name": "gsm8k", "path": str(gsm8k), "rows": 3},
        {"name": "math500", "path": str(math500)},
    ]
    ds = data.load_prompts(sources, no_think_fraction=0.5, seed=0)
    assert len(ds) == 38 and ds["mode"].count("no_think") == 19
    assert ds["source"] == ["arithmetic"] * 30 + ["gsm8k"] * 3 + ["math500"] * 5
    gsm8k_rows = [json.loads(line) for line in gsm8k.read_text().splitlines()]
    math_rows = [json.loads(line) for line in math500.read_text().splitlines()]
    test_questions = {p.question: p for p in task.generate("test", 30, seed=0)}
    for i, row in enumerate(ds):
        system, question = row["prompt"]
        assert system == {"role": "system", "content": f"/{row['mode']}"} and question["role"] == "user"
        if row["source"] == "arithmetic":
            p = test_questions[question["content"]]
            assert row["answer"] == p.answer and row["level"] == p.level in (1, 2, 3)
        elif row["source"] == "gsm8k":
            assert row["answer"] == gsm8k_final(gsm8k_rows[i - 30]["answer"]) and row["level"] is None
        else:
            assert (question["content"], row["answer"]) == (math_rows[i - 33]["problem"], math_rows[i - 33]["answer"])


def hub_layout(folder, fixtures):
    """GSM8K as its Hub repository lays it out (a `git clone` of openai/gsm8k): parquet files per config and
    split, and a README whose YAML header names the configs."""
    from datasets import Dataset

    for split in ("train", "test"):
        rows = [json.loads(line) for line in open(fixtures / "gsm8k" / f"{split}.jsonl")]
        (folder / "main").mkdir(parents=True, exist_ok=True)
        Dataset.from_list(rows).to_parquet(str(folder / "main" / f"{split}-00000-of-00001.parquet"))
    (folder / "README.md").write_text(
        "---\nconfigs:\n- config_name: main\n  data_files:\n  - split: train\n    path: main/train-*\n"
        "  - split: test\n    path: main/test-*\n---\n"
    )
    return folder


def test_gsm8k_from_a_hub_layout_folder_a_saved_dataset_and_a_parquet_file(tmp_path, fixtures):
    """A local copy of a Hub dataset reads as the Hub id would: config `main` by default, the split asked for."""
    from datasets import DatasetDict, load_dataset

    expected = data.load_prompts([{"name": "gsm8k", "path": str(fixtures / "gsm8k" / "test.jsonl")}],
                                 no_think_fraction=0.0, seed=0)
    clone = hub_layout(tmp_path / "gsm8k", fixtures)
    saved = tmp_path / "saved"
    DatasetDict({"test": load_dataset(str(clone), "main", split="test")}).save_to_disk(str(saved))
    parquet = clone / "main" / "test-00000-of-00001.parquet"
    for spec in ({"path": str(clone), "split": "test"}, {"path": str(saved), "split": "test"}, {"path": str(parquet)}):
        ds = data.load_prompts([{"name": "gsm8k", **spec}], no_think_fraction=0.0, seed=0)
        assert ds["prompt"] == expected["prompt"] and ds["answer"] == expected["answer"] == ["30", "150", "49", "1500"]
        assert ds[0]["where"].endswith(": row 1") and ds[0]["where"].startswith(spec["path"])
    train = data.load_conversations([{"name": "gsm8k", "path": str(clone), "rows": 3}], no_think_fraction=0.5, seed=0)
    assert len(train) == 3 and train[0]["where"] == f"{clone} (main/train): row 1"  # split train by default
    with pytest.raises(DataError, match=rf"^{re.escape(str(clone))} \(main/dev\): cannot load \(.*dev"):
        data.load_prompts([{"name": "gsm8k", "path": str(clone), "split": "dev"}], no_think_fraction=0.0, seed=0)
    with pytest.raises(DataError, match="is one file, with no splits"):
        data.load_prompts([{"name": "gsm8k", "path": str(parquet), "split": "test"}], no_think_fraction=0.0, seed=0)


def test_hub_ids_offline_stop_training_and_are_skipped_by_evaluation(caplog):
    """gsm8k and math500 default to their Hub ids. Offline and uncached (the test session runs with
    HF_HUB_OFFLINE=1), a training loader stops with one line; evaluation goes on without the source."""
    from posttrain.evaluate import load_eval_prompts

    parsed = data.parse_dataset_sources([{"name": "gsm8k"}, {"name": "math500"}], ("gsm8k", "math500"))
    assert [s.path for s in parsed] == ["openai/gsm8k", "HuggingFaceH4/MATH-500"]
    with pytest.raises(data.SourceUnavailable) as error:
        data.load_conversations([{"name": "gsm8k", "rows": 5}], no_think_fraction=0.5, seed=0)
    assert str(error.value).startswith("openai/gsm8k (main/train): cannot be loaded from the Hugging Face Hub")
    assert "\n" not in str(error.value) and "local copy" in str(error.value)
    sources = [{"name": "arithmetic", "split": "test", "rows": 4}, {"name": "math500", "rows": 10}]
    with caplog.at_level(logging.WARNING, logger="posttrain"):
        prompts, skipped = load_eval_prompts(sources, seed=0)
    assert len(prompts) == 8 and set(prompts["source"]) == {"arithmetic"}  # 4 questions x 2 modes
    assert len(skipped) == 1 and skipped[0].startswith("HuggingFaceH4/MATH-500 (test): cannot be loaded")
    assert f"SKIPPED evaluation source {skipped[0]}" in caplog.text
    with pytest.raises(UserError, match=r"^no evaluation source can be loaded: HuggingFaceH4"):
        load_eval_prompts(sources[1:], seed=0)
    with pytest.raises(DataError, match="data file not found"):  # a missing local file is an error, not a skip
        load_eval_prompts([*sources, {"name": "prompts", "path": "nowhere/quiz.jsonl"}], seed=0)


def test_user_prompts_keep_their_mode(tmp_path):
    path = write_jsonl(tmp_path / "quiz.jsonl", [
        {"prompt": "What is 2+2?", "answer": 4, "mode": "no_think"}, {"prompt": "What is 3+3?", "answer": "6"},
    ])
    ds = data.load_prompts([{"name": "prompts", "path": path}], no_think_fraction=0.0, seed=0)
    assert ds["mode"] == ["no_think", "think"] and ds["answer"] == ["4", "6"] and ds["source"] == ["quiz"] * 2
    assert ds[0]["prompt"] == [{"role": "system", "content": "/no_think"}, user("What is 2+2?")]


# ------------------------------------------------------------------------------ mixture, length, record


def test_mix_gives_exact_shares_repeating_small_sources():
    a = data.load_prompts([{"name": "arithmetic", "rows": 40, "levels": [1]}], no_think_fraction=0, seed=0)
    b = data.load_prompts([{"name": "arithmetic", "rows": 5, "levels": [3]}], no_think_fraction=0, seed=0)
    a, b = a.to_list(), b.to_list()
    mixed = data.mix([(a, 3.0), (b, 1.0)], total_rows=40, seed=0)
    assert len(mixed) == 40 and [r["level"] for r in mixed].count(3) == 10
    repeated = [r["prompt"][1]["content"] for r in mixed if r["level"] == 3]
    assert set(repeated) == {r["prompt"][1]["content"] for r in b}
    assert all(repeated.count(q) == 2 for q in repeated)  # 10 rows from 5: each used twice
    assert data.mix([(a, 3.0), (b, 1.0)], total_rows=40, seed=0) == mixed
    via_recipe = data.load_prompts(
        [{"name": "arithmetic", "rows": 40, "levels": [1], "weight": 3}, {"name": "arithmetic", "rows": 5,
          "levels": [3], "weight": 1}], no_think_fraction=0, seed=0,
    )
    assert len(via_recipe) == 45 and via_recipe["level"].count(3) == 11  # 45 x 1/4, rounded


def test_drop_overlong_counts_per_mode_and_can_refuse(tiny_tokenizer, caplog):
    ds = data.load_conversations([{"name": "arithmetic", "rows": 40, "levels": [3]}], no_think_fraction=0.5, seed=0)

    def length(row):
        return len(tiny_tokenizer.apply_chat_template(row["messages"], **row["chat_template_kwargs"])["input_ids"])

    longest_no_think = max(length(r) for r in ds if r["mode"] == "no_think")
    assert longest_no_think < min(length(r) for r in ds if r["mode"] == "think")  # the trace makes the difference
    with caplog.at_level(logging.WARNING, logger="posttrain.data"):
        kept, stats = data.drop_overlong(ds, tiny_tokenizer, longest_no_think, policy="drop")
    assert stats == {"think": 20, "no_think": 0}
    assert set(kept["mode"]) == {"no_think"} and "20 of 20 /think rows" in caplog.text
    first_think = ds[ds["mode"].index("think")]["where"]  # rows are shuffled: the error names the source row
    assert first_think.startswith("arithmetic (split train, seed 0): problem ")
    with pytest.raises(DataError, match=rf"^{re.escape(first_think)}: field 'messages': \d+ tokens rendered in "
                                        r"/think mode > max_length \d+ \(overlong_policy: error\)$"):
        data.drop_overlong(ds, tiny_tokenizer, longest_no_think, policy="error")
    # preference rows are measured with their longer side: here, a /no_think rejected answer that thinks
    pairs = data.load_preferences([{"name": "arithmetic", "rows": 40, "levels": [3]}], no_think_fraction=1.0, seed=0)
    longest_chosen = max(length({"messages": r["prompt"] + r["chosen"], **r}) for r in pairs)
    kept, stats = data.drop_overlong(pairs, tiny_tokenizer, longest_chosen + 1)  # + a wrong answer's extra digit
    dropped = [r for r in pairs if r not in list(kept)]
    assert stats == {"think": 0, "no_think": len(dropped)} and dropped
    assert all(r["rejected"][0]["content"].startswith("<think>") for r in dropped)


def test_fingerprint_follows_content():
    ds = data.load_prompts([{"name": "arithmetic", "rows": 20}], no_think_fraction=0.5, seed=0)
    changed = ds.map(lambda r, i: {"answer": "0" if i == 7 else r["answer"]}, with_indices=True)
    assert data.dataset_fingerprint(ds) == data.dataset_fingerprint(ds.select(range(20)))
    assert data.dataset_fingerprint(ds) != data.dataset_fingerprint(changed)


# -------------------------------------------------------------------------------------------- bad input

def chat(reply, **extra):
    """A one-question conversation row with `reply` as the assistant message (a string or a message)."""
    return {"messages": [user("2+2?"), reply if isinstance(reply, dict) else assistant(reply)], **extra}


GOOD = chat("<think>\n2+2=4\n</think>\n4")
BAD_CONVERSATIONS = {  # case: (rows, 1-based line of the bad row, what the message says)
    "missing messages": ([GOOD, {"text": "hi"}], 2, "field 'messages': missing"),
    "messages not a list": ([{"messages": "hello"}], 1, "field 'messages': must be a non-empty list"),
    "unknown role": ([GOOD, "", {"messages": [{"role": "bot", "content": "x"}]}], 3,
                     "field 'messages[0].role': unknown role 'bot'"),
    "content not a string": ([chat({"role": "assistant", "content": 4})], 1,
                             "field 'messages[1].content': must be a string"),
    "empty assistant content": ([chat(" ")], 1, "field 'messages[1].content': empty assistant content"),
    "no assistant turn": ([GOOD, GOOD, {"messages": [user("2+2?")]}], 3, "field 'messages': no assistant turn"),
    "think block in /no_think": ([chat("<think>\nx\n</think>\n4", mode="no_think")], 1,
                                 "field 'messages[1].content': a <think> block in a /no_think answer"),
    "unclosed think block": ([chat("<think>\nx 4")], 1, "field 'messages[1].content': malformed think block"),
    "bad mode": ([chat("4", mode="fast")], 1, "field 'mode': must be think or no_think"),
    "malformed JSON": ([GOOD, GOOD, '{"messages": [}'], 3, "not valid JSON"),
    "think row without reasoning": ([GOOD, chat("4", mode="think")], 2,
                                    "field 'messages[1]': /think assistant turn without reasoning"),
    "tool call on a user turn": ([chat("4", mode="no_think") | {"messages": [
        user("2+2?") | {"tool_calls": [{"name": "add", "arguments": {}}]}, assistant("4")]}], 1,
        "field 'messages[0].tool_calls': only an assistant message calls tools"),
    "tool call without a name": ([chat({"role": "assistant", "content": "", "tool_calls": [{"arguments": {}}]})], 1,
                                 "field 'messages[1].tool_calls[0].name': missing"),
    "tool arguments not JSON": ([chat({"role": "assistant", "content": "", "tool_calls": [
        {"name": "add", "arguments": "{a: 1"}]})], 1, "field 'messages[1].tool_calls[0].arguments': not valid JSON"),
    "tool result without a call": ([{"messages": [user("2+2?"), {"role": "tool", "content": "4"}, assistant("4")]}],
                                   1, "field 'messages[1].role': a tool result must follow an assistant message"),
    "tools not a list": ([chat("4", mode="no_think", xml_tools="add")], 1,
                         "field 'xml_tools': must be a list of tool signatures"),
    # require_reasoning refuses an untagged row without a trace too (it would otherwise train as /no_think)
    "untagged row without reasoning": ([GOOD, chat("4")], 2,
                                       "field 'messages[1]': /think assistant turn without reasoning"),
}


@pytest.mark.parametrize("case", BAD_CONVERSATIONS, ids=list(BAD_CONVERSATIONS))
def test_bad_conversation_rows_name_file_row_and_field(tmp_path, case):
    rows, row_number, message = BAD_CONVERSATIONS[case]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as error:
        data.load_conversations(
            [{"name": "messages", "path": path}], no_think_fraction=0.5, seed=0, require_reasoning=True
        )
    assert str(error.value).startswith(f"{path}: row {row_number}: ") and message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("loader, name, row, message", [
    (data.load_preferences, "preferences", {"prompt": "2+2?", "chosen": "4", "rejected": "4"},
     "field 'rejected': same as 'chosen'"),
    (data.load_preferences, "preferences",
     {"prompt": "2+2?", "chosen": "<think>\nx\n</think>\n4", "rejected": "5", "mode": "no_think"},
     "field 'chosen[0].content': a <think> block in a /no_think"),
    (data.load_preferences, "preferences",
     {"prompt": "2+2?", "chosen": [assistant("4"), assistant("5")], "rejected": "5"},
     "field 'chosen': must be one assistant"),
    (data.load_prompts, "prompts", {"prompt": "2+2?"}, "field 'answer': missing"),
    (data.load_prompts, "prompts", {"prompt": [{"role": "system", "content": "x"}, user("2+2?")], "answer": "4"},
     "field 'prompt': no system message"),
])
def test_bad_preference_and_prompt_rows(tmp_path, loader, name, row, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [row])
    with pytest.raises(DataError, match=re.escape(f"{path}: row 1: {message}")):
        loader([{"name": name, "path": path}], no_think_fraction=0.5, seed=0)


@pytest.mark.parametrize("sources, fraction, message", [
    ([{"name": "arithmetic", "rows": 5, "wieght": 1}], 0.5, "recipe key datasets[0].wieght: unknown key"),
    ([{"name": "math500"}], 0.5, "recipe key datasets[0].name: 'math500' is not one of arithmetic, gsm8k, messages"),
    ([{"name": "gsm8k", "levels": [1]}], 0.5, "recipe key datasets[0].levels: applies to arithmetic only"),
    ([{"name": "arithmetic", "rows": 5, "weight": 1}, {"name": "gsm8k"}], 0.5,
     "recipe key datasets[1].weight: give a weight"),
    ([{"name": "arithmetic"}], 0.5, "recipe key datasets[0].rows: arithmetic needs rows"),
    ([{"name": "arithmetic", "rows": 5, "levels": [9]}], 0.5,
     "recipe key datasets[0].levels: must be a list of levels"),
    ([{"name": "messages"}], 0.5, "recipe key datasets[0].path: messages needs a path"),
    ([{"name": "messages", "path": "nowhere/chat.jsonl"}], 0.5, "nowhere/chat.jsonl: data file not found"),
    ([{"name": "arithmetic", "rows": 5}], 1.5, "recipe key 'no_think_fraction': must be between 0 and 1"),
])
def test_bad_sources_name_the_recipe_key(sources, fraction, message):
    with pytest.raises(DataError, match=re.escape(message)):
        data.load_conversations(sources, no_think_fraction=fraction, seed=0)
