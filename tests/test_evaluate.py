"""`posttrain eval`: scoring of hand-written completions through the real RLVR rewards (math-verify), the
decoding that keeps think tags, both-mode prompts, length drift, and real generation with the tiny model."""

import json
import logging

import pytest
import torch
from datasets import Dataset
from transformers import AutoConfig, AutoTokenizer, SmolLM3ForCausalLM

from common.errors import UserError
from posttrain.evaluate import (
    _batches, in_modes, decode_completion, evaluate, length_drift, load_baseline, main, pass_at_k, score,
    to_markdown,
)

THINK = "<think>\n{r}\n</think>\nThe answer is \\boxed{{{a}}}."


@pytest.fixture(scope="module")
def lively_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny architecture with 10x the usual init scale: its greedy output differs from prompt to prompt
    (at the usual scale every prompt gives the same string), so batching and reordering mistakes show."""
    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.initializer_range = 0.2
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("lively_model")
    SmolLM3ForCausalLM(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def _row(question, answer, mode, level, source="arithmetic"):
    return {"prompt": [{"role": "system", "content": f"/{mode}"}, {"role": "user", "content": question}],
            "answer": answer, "mode": mode, "level": level, "source": source}


def test_score_hand_written_completions():
    rows_and_completions = [
        # /think: right, wrong, answer only inside the block (wrong and not adherent), no block at all
        (_row("What is 2+3?", "5", "think", 1), THINK.format(r="2+3=5", a=5)),
        (_row("What is 20+30?", "50", "think", 2), THINK.format(r="20+30=40", a=40)),
        (_row("What is 21+30?", "51", "think", 2), "<think>\nso \\boxed{51}\n</think>\n"),
        (_row("Ann has 3 pens...", "7", "think", None, "gsm8k"), "The answer is \\boxed{7}."),
        # /no_think: right, right but with a think block (not adherent), rambling until cut off by the token
        # budget (not adherent: no answer), gold that does not parse
        (_row("What is 2+3?", "5", "no_think", 1), "\\boxed{5}"),
        (_row("What is 20+30?", "50", "no_think", 2), "<think>\n20+30\n</think>\n\\boxed{50}"),
        (_row("What is 21+30?", "51", "no_think", 2), "15 15 15 15"),
        (_row("Ann has 3 pens...", "\\frac{", "no_think", None, "gsm8k"), "\\boxed{7}"),
    ]
    rows, completions = zip(*rows_and_completions)
    num_tokens = [10, 20, 30, 40, 1, 2, 3, 4]
    truncated = [False, False, True, False, False, False, True, False]
    result = score(completions, rows, num_tokens=num_tokens, truncated=truncated, num_samples=3)

    think, no_think = result["modes"]["think"], result["modes"]["no_think"]
    assert think["accuracy"] == 2 / 4 and no_think["accuracy"] == 2 / 3  # the unparseable gold is left out
    assert (think["unscored"], no_think["unscored"]) == (0, 1)
    assert think["mode_adherence"] == 2 / 4  # right and wrong answers adhere; inside-only and no-block do not
    assert no_think["mode_adherence"] == 2 / 4  # the think block and the cut-off rambling break /no_think
    assert (think["mean_tokens"], no_think["mean_tokens"]) == (25.0, 2.5)
    assert (think["truncated"], no_think["truncated"], think["n"], no_think["n"]) == (0.25, 0.25, 4, 4)
    level = lambda accuracy, n, tokens: {"accuracy": accuracy, "n": n, "mean_tokens": tokens, "think_rate": None}
    assert think["by_level"] == {1: level(1.0, 1, 10.0), 2: level(0.0, 2, 25.0)}  # gsm8k: no level
    assert no_think["by_level"] == {1: level(1.0, 1, 1.0), 2: level(0.5, 2, 2.5)}
    assert result["by_source"]["gsm8k"]["think"]["accuracy"] == 1.0
    assert result["by_source"]["gsm8k"]["no_think"]["accuracy"] is None
    assert result["by_source"]["arithmetic"]["think"]["n"] == 3
    assert [s["completion"] for s in result["samples"]] == list(completions[:3])
    assert result["samples"][1] == {**result["samples"][1], "question": "What is 20+30?", "accuracy": 0.0, "adherent": 1.0}

    markdown = to_markdown(result)
    # SE over questions: /think per-question accuracy 1, 0, 0, 1 -> sd 0.577 / sqrt(4)
    assert "| /think | 4 | 50.0% | 28.9% | 50.0% | 25.0 | 25.0% | - | 25.0% | 0.0% | - | - |" in markdown
    assert "| 2 | 0.0% (2), 25 tok | 50.0% (2), 2 tok |" in markdown


def test_auto_think_reports_how_often_the_model_chose_to_think_per_level():
    """/auto_think: an empty think block is the model's direct answer; the think rate is the share that thought."""
    direct, thought = "<think>\n\n</think>\n\\boxed{{{a}}}", THINK
    rows_and_completions = [
        (_row("What is 2+3?", "5", "auto_think", 1), direct.format(a=5)),
        (_row("What is 4+4?", "8", "auto_think", 1), direct.format(a=8)),
        (_row("What is 123+456?", "579", "auto_think", 3), thought.format(r="123+456=579", a=579)),
        (_row("What is 321+456?", "777", "auto_think", 3), direct.format(a=700)),
        (_row("What is 2+3?", "5", "auto_think", 1), "\\boxed{5}"),  # no think block: neither choice
    ]
    rows, completions = zip(*rows_and_completions)
    result = score(completions, rows, num_tokens=[6, 6, 30, 6, 3], truncated=[False] * 5)
    auto = result["modes"]["auto_think"]
    assert auto["think_rate"] == 2 / 5 and auto["mode_adherence"] == 4 / 5 and auto["accuracy"] == 4 / 5
    assert auto["by_level"][1] == {"accuracy": 1.0, "n": 3, "mean_tokens": 5.0, "think_rate": 1 / 3}
    assert auto["by_level"][3] == {"accuracy": 0.5, "n": 2, "mean_tokens": 18.0, "think_rate": 0.5}
    assert "| 3 | 50.0% (2), 18 tok, thinks 50.0% |" in to_markdown(result)


def test_pass_at_k_and_the_standard_error_over_questions():
    assert pass_at_k(4, 2, 1) == 0.5 and pass_at_k(4, 2, 4) == 1.0 and pass_at_k(4, 0, 2) == 0.0
    assert pass_at_k(5, 1, 2) == pytest.approx(1 - 6 / 10)  # 1 - C(4,2)/C(5,2)
    rows = [{**_row("What is 2+3?", "5", "think", 1), "where": "q1"}] * 4 + \
        [{**_row("What is 20+30?", "50", "think", 2), "where": "q2"}] * 4
    completions = [THINK.format(r="r", a=a) for a in (5, 5, 4, 4, 40, 40, 40, 40)]
    result = score(completions, rows, num_tokens=[5] * 8, truncated=[False] * 8)
    think = result["modes"]["think"]
    assert think["accuracy"] == 0.25  # pass@1 averaged over 4 samples of 2 questions
    assert think["pass_at_k"] == {"1": 0.25, "4": 0.5}
    assert think["accuracy_se"] == pytest.approx(0.25)  # question means 0.5 and 0: sd 0.354 / sqrt(2)
    assert "Sampled: /think pass@1 25.0%, pass@4 50.0%" in to_markdown(result)


def test_sampled_evaluation_draws_n_answers_per_question(lively_model_dir):
    questions = ["What is 1+2?", "What is 12+30?", "What is 5+5?"]
    prompts = in_modes(Dataset.from_list([{**_row(q, "3", "think", 1), "where": q} for q in questions]))
    with pytest.raises(UserError, match="need temperature > 0"):
        evaluate(lively_model_dir, prompts, max_new_tokens=4, batch_size=8, num_generations=2)
    sampling = {"temperature": 1.0, "top_p": 1.0, "seed": 0}
    result = evaluate(lively_model_dir, prompts, max_new_tokens=4, batch_size=8, num_generations=3,
                      sampling=sampling)
    assert result["generation"]["completions"] == 18 and result["generation"]["num_generations"] == 3
    assert result["modes"]["think"]["n"] == 9 and set(result["modes"]["think"]["pass_at_k"]) == {"1", "3"}


def test_in_modes_asks_every_question_in_in_modes():
    prompts = Dataset.from_list([_row("What is 2+3?", "5", "think", 1), _row("What is 4+4?", "8", "no_think", 1)])
    rows = in_modes(prompts).to_list()
    assert [(r["prompt"][0]["content"], r["mode"], r["prompt"][1]["content"]) for r in rows] == [
        ("/think", "think", "What is 2+3?"), ("/no_think", "no_think", "What is 2+3?"),
        ("/think", "think", "What is 4+4?"), ("/no_think", "no_think", "What is 4+4?"),
    ]
    assert [r["answer"] for r in rows] == ["5", "5", "8", "8"] and all(len(r["prompt"]) == 2 for r in rows)


def test_decoding_keeps_think_tags_marked_special_and_drops_pad_and_eos(tiny_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<think>", "</think>"]})  # as the Llama-3 one
    text = "<think>\n1+2=3\n</think>\n\\boxed{3}"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert "<think>" not in tokenizer.decode(ids, skip_special_tokens=True)  # what decoding must not do
    eos, pad = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.pad_token_id

    assert decode_completion(tokenizer, ids + [eos, pad, pad], eos) == (text, len(ids) + 1, False)
    assert decode_completion(tokenizer, ids, eos) == (text, len(ids), True)  # no stop token: cut by the budget


def test_batches_sort_by_length_and_keep_long_prompts_apart():
    # budget: 4 prompts x (mean length 205 + 100 new tokens); the 700-token prompt would pad three others
    assert _batches([150] * 4 + [700] + [150] * 5, batch_size=4, max_new_tokens=100) == [[4], [0, 1, 2, 3], [5, 6, 7, 8], [9]]
    assert _batches([5, 5, 9, 5], batch_size=2, max_new_tokens=10) == [[2], [0, 1], [3]]  # 2 x 19 > budget 2 x 16


def test_batches_hold_one_mode_each():
    # A /no_think row finishes in ~10 tokens; batched with a /think row it would decode to the /think row's end.
    modes = ["think", "no_think"] * 3
    batches = _batches([10, 9] * 3, batch_size=4, max_new_tokens=100, groups=modes)
    assert sorted(sorted(b) for b in batches) == [[0, 2, 4], [1, 3, 5]]


def test_length_drift_ratio_per_mode_and_warning(tmp_path, caplog):
    result = {"modes": {"think": {"mean_tokens": 30.0}, "no_think": {"mean_tokens": 5.0}}}
    (tmp_path / "prev.json").write_text(json.dumps({"modes": {"think": {"mean_tokens": 15}, "no_think": {"mean_tokens": 5}}}))
    with caplog.at_level(logging.WARNING, logger="posttrain"):
        drift = length_drift(result, load_baseline(tmp_path / "prev.json"), warn=1.5)
    assert drift == {"think": 2.0, "no_think": 1.0}
    assert "/think" in caplog.text and "/no_think" not in caplog.text
    (tmp_path / "bad.json").write_text(json.dumps({"modes": {"think": {"accuracy": 1.0}}}))
    with pytest.raises(UserError, match=r"bad\.json: key 'modes.<mode>.mean_tokens'"):
        load_baseline(tmp_path / "bad.json")


def test_evaluate_tiny_model_batched_matches_one_by_one(lively_model_dir):
    questions = ["What is 1+2?", "What is 12+30?", "Ann has 4 pens and buys 5 more. How many pens does Ann have now?"]
    prompts = in_modes(Dataset.from_list([_row(q, "3", "think", 1) for q in questions]))
    threads = torch.get_num_threads()
    batched = evaluate(lively_model_dir, prompts, max_new_tokens=6, batch_size=4, num_samples=6)
    single = evaluate(lively_model_dir, prompts, max_new_tokens=6, batch_size=1, num_samples=6)
    assert torch.get_num_threads() == threads  # generation's one thread is restored afterwards

    assert set(batched) == {"modes", "by_source", "samples", "generation"}
    for mode in ("think", "no_think"):
        m = batched["modes"][mode]
        assert set(m) >= {"accuracy", "mode_adherence", "mean_tokens", "n", "by_level"} and m["n"] == 3
        assert 1 <= m["mean_tokens"] <= 6 and m["by_level"][1]["n"] == 3
    assert batched["generation"]["completions"] == 6
    # left padding and the length sort change nothing: each completion is the one generated alone
    completions = [s["completion"] for s in batched["samples"]]
    assert completions == [s["completion"] for s in single["samples"]] and len(set(completions)) > 1


def test_sampling_is_seeded_and_recorded(lively_model_dir):
    prompts = in_modes(Dataset.from_list([_row(f"What is {n}+{n}?", str(2 * n), "think", 1) for n in (3, 14, 27)]))

    def completions(sampling):
        result = evaluate(lively_model_dir, prompts, max_new_tokens=8, batch_size=4, num_samples=6, sampling=sampling)
        assert result["generation"]["decoding"] == (sampling or "greedy")
        return [s["completion"] for s in result["samples"]]

    sampled = completions({"temperature": 2.0, "top_p": 0.95, "seed": 1})
    assert sampled == completions({"temperature": 2.0, "top_p": 0.95, "seed": 1})  # same seed, same text
    assert sampled != completions({"temperature": 2.0, "top_p": 0.95, "seed": 2})
    assert sampled != completions(None)


def test_cli_writes_json_and_markdown_with_drift(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "prev.json").write_text(json.dumps({"modes": {"think": {"mean_tokens": 2}, "no_think": {"mean_tokens": 4}}}))
    out_json, out_md = tmp_path / "out" / "eval.json", tmp_path / "out" / "eval.md"
    argv = ["--model_name_or_path", str(tiny_model_dir), "--datasets", "[{name: arithmetic, split: test, rows: 2}]",
            "--max_new_tokens", "4", "--output_json", str(out_json), "--output_md", str(out_md)]

    with pytest.raises(UserError, match="recipe key 'temperature' must be"):
        main(argv + ["--temperature", "-0.5"])
    with pytest.raises(UserError, match="missing.json: baseline eval JSON not found"):
        main(argv + ["--baseline", str(tmp_path / "missing.json")])
    assert not (tmp_path / "out").exists()  # nothing written before validation passes

    assert main(argv + ["--baseline", str(tmp_path / "prev.json")]) == 0
    result = json.loads(out_json.read_text())
    assert {m: r["n"] for m, r in result["modes"].items()} == {"think": 2, "no_think": 2}
    assert result["length_drift"] == {
        "think": round(result["modes"]["think"]["mean_tokens"] / 2, 3),
        "no_think": round(result["modes"]["no_think"]["mean_tokens"] / 4, 3),
    }
    assert out_md.read_text() in capsys.readouterr().out
