"""posttrain/lighteval_tasks.py, run by lighteval itself: its registry loads the file as `--custom-tasks` does, its
prompt manager renders the questions with our template under its `system_prompt`, and its metric scores hybrid
answers after its think-block removal.

lighteval pins latex2sympy2_extended 1.0.6 (math-verify 0.9 needs 1.11), so these tests run in an environment of
their own (marker `lighteval`; CI builds it): pip install torch==2.13.0 lighteval==0.13.0 pytest &&
pytest -m lighteval tests/test_lighteval_tasks.py
"""

from pathlib import Path

import pytest

pytestmark = pytest.mark.lighteval

ROOT = Path(__file__).resolve().parents[1]
TASKS_FILE = ROOT / "posttrain" / "lighteval_tasks.py"

# Rows in each Hub dataset's own schema (abridged from their first test rows).
ROWS = {
    "hybrid_gsm8k": [
        {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                     "How many clips did Natalia sell altogether in April and May?",
         "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
                   "altogether in April and May.\n#### 72"}],
    "hybrid_math_500": [
        {"problem": "If $x + y = 7$ and $x - y = 1/3$, what is $x$?", "solution": "Adding gives $2x = 22/3$.",
         "answer": "\\frac{11}{3}", "subject": "Algebra", "level": 2, "unique_id": "test/algebra/1.json"}],
    "hybrid_gsm_plus": [
        {"question": "Janet's ducks lay 16 eggs per day. She eats three and bakes with four. She sells the rest for "
                     "$2 each. How many dollars does she make every day?", "solution": "16 - 3 - 4 = 9; 9 * 2 = 18",
         "answer": "18", "perturbation_type": "numerical substitution", "seed_question": "..."},
        {"question": "Janet's ducks lay eggs every day. She sells the rest for $2 each. How much does she make?",
         "solution": "", "answer": "None", "perturbation_type": "critical thinking", "seed_question": "..."}],
}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """lighteval's registry imports every built-in task file, and tiny_benchmarks downloads a file from GitHub at
    import time; it tolerates a failed answer, not a missing network, so here the request answers 503."""
    import requests

    monkeypatch.setattr(requests, "get", lambda *args, **kwargs: requests.Response())  # status_code None


def load(spec: str) -> dict:
    """The tasks named in `spec`, as `lighteval ... SPEC --custom-tasks posttrain/lighteval_tasks.py` loads them,
    with the rows above as their test split (no Hub here) and the task's own row filter applied."""
    from datasets import Dataset, DatasetDict
    from lighteval.tasks.registry import Registry

    tasks = Registry(tasks=spec, custom_tasks=str(TASKS_FILE)).load_tasks()
    for name, task in tasks.items():
        split = DatasetDict({"test": Dataset.from_list(ROWS[name.split("|")[0]])})
        task.dataset = split.filter(task.dataset_filter) if task.dataset_filter else split
    return tasks


def hybrid_tokenizer():
    """A tokenizer carrying our template (the vocabulary does not matter for rendering)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"<unk>": 0}, unk_token="<unk>")),
                                   chat_template=(ROOT / "templates" / "smollm3_hybrid.jinja").read_text())


def score(task, doc, texts: list[str]) -> float:
    """The task's pass@k for these sampled answers, after lighteval's default think-block removal."""
    from lighteval.models.model_output import ModelResponse
    from lighteval.utils.utils import remove_reasoning_tags

    response = ModelResponse(text=texts, text_post_processed=[
        remove_reasoning_tags(text, [("<think>", "</think>")]) for text in texts])
    [metric] = task.metrics
    [value] = metric.compute_sample(doc=doc, model_response=response).values()
    return value


def test_questions_are_sent_bare_and_golds_are_final_answers():
    tasks = load("hybrid_gsm8k|0,hybrid_math_500|0,hybrid_gsm_plus|0")
    docs = {name.split("|")[0]: task.get_docs() for name, task in tasks.items()}
    assert [d.get_golds() for d in docs["hybrid_gsm8k"]] == [["72"]]
    assert docs["hybrid_gsm8k"][0].query == ROWS["hybrid_gsm8k"][0]["question"]
    assert [d.get_golds() for d in docs["hybrid_math_500"]] == [["\\frac{11}{3}"]]
    # GSM-Plus's "critical thinking" row has no answer to score: filtered out
    assert [d.query for d in docs["hybrid_gsm_plus"]] == [ROWS["hybrid_gsm_plus"][0]["question"]]


@pytest.mark.parametrize("mode", ["/think", "/no_think"])
def test_system_prompt_selects_the_mode_in_our_template(mode):
    from lighteval.tasks.prompt_manager import PromptManager

    tokenizer = hybrid_tokenizer()
    [doc] = load("hybrid_gsm8k|0")["hybrid_gsm8k|0"].get_docs()
    prompt = PromptManager(use_chat_template=True, tokenizer=tokenizer, system_prompt=mode).prepare_prompt(doc)
    ours = tokenizer.apply_chat_template([{"role": "system", "content": mode}, {"role": "user", "content": doc.query}],
                                         tokenize=False, add_generation_prompt=True)
    assert prompt == ours
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n" if mode == "/no_think"
                           else f"{doc.query}<|im_end|>\n<|im_start|>assistant\n")
    assert ("/no_think" if mode == "/no_think" else "/think") in prompt and "Question:" not in prompt


def test_answers_are_scored_after_the_think_block():
    tasks = load("hybrid_gsm8k|0,hybrid_math_500|0")
    gsm8k, math_500 = tasks["hybrid_gsm8k|0"], tasks["hybrid_math_500|0"]
    [question], [problem] = gsm8k.get_docs(), math_500.get_docs()
    assert score(gsm8k, question, ["<think>\n48 / 2 = 24, 48 + 24 = 72\n</think>\nShe sold 72 clips."]) == 1
    # the right number inside the think block does not count
    assert score(gsm8k, question, ["<think>\n48 + 24 = 72\n</think>\nShe sold 71 clips."]) == 0
    assert score(gsm8k, question, ["She sold 72 clips."]) == 1  # /no_think: no think block
    assert score(math_500, problem, ["<think>\n2x = 22/3\n</think>\n$x = \\boxed{\\frac{11}{3}}$"]) == 1
    assert score(math_500, problem, ["<think>\nx = 11/3\n</think>\n$x = \\boxed{4}$"]) == 0


def test_samples_per_question_are_set_on_the_command_line():
    """`hybrid_gsm_plus@k=1@n=4|0`: pass@1 averaged over 4 samples (SmolLM3's sampled evaluation)."""
    task = load("hybrid_gsm_plus@k=1@n=4|0")["hybrid_gsm_plus|0"]
    [doc] = task.get_docs()
    right, wrong = "<think>\n9 * 2 = 18\n</think>\nShe makes $18.", "<think>\n9 * 2 = 18\n</think>\nShe makes $16."
    assert score(task, doc, [right, wrong, right, wrong]) == 0.5
    assert score(task, doc, [right] * 4) == 1
