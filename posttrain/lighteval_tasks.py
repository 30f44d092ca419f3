"""GSM8K, MATH-500 and GSM-Plus as lighteval tasks for hybrid models: SmolLM3-style numbers on a GPU.

lighteval's own tasks wrap each question in a few-shot "Question: ... Answer:" frame or an "ANSWER: $ANSWER"
instruction. A hybrid model is trained on the bare question, with the mode in the system prompt, so these tasks
send the bare question (what `posttrain eval` sends) and leave the mode to lighteval's `system_prompt`, which our
template reads like SmolLM3's: `/think` or `/no_think`. Scoring is lighteval's `pass@k` math metric (its
math-verify extraction) on the answer after the think block, which lighteval strips by default.

lighteval pins latex2sympy2_extended 1.0.6 and math-verify 0.9 (ours) needs 1.11, so lighteval lives in its own
environment; this file imports nothing of posttrain. lighteval 0.13 also calls `HfApi.list_models(model_name=)`,
which huggingface_hub 2 removed. SmolLM3's settings (vLLM, temperature 0.6, top_p 0.95):

    pip install 'lighteval[vllm]==0.13.0' 'huggingface_hub<2'
    lighteval vllm "model_name=runs/smollm2-135m/dpo,dtype=bfloat16,system_prompt=/think,\
generation_parameters={temperature:0.6,top_p:0.95,max_new_tokens:4096}" \\
        "hybrid_gsm_plus@k=1@n=4|0,hybrid_math_500@k=1@n=4|0" --custom-tasks posttrain/lighteval_tasks.py

and again with `system_prompt=/no_think`: the think-vs-no_think gap is the figure users compare (SmolLM3-3B:
GSM-Plus 83.4 vs 72.8). `@k=..@n=..` sets pass@k over n samples per question (pass@1 averaged over n for k=1).
"""

from lighteval.metrics.metrics import Metrics
from lighteval.tasks.lighteval_task import LightevalTaskConfig
from lighteval.tasks.requests import Doc


def gsm8k_doc(line: dict, task_name: str = None) -> Doc:
    """A GSM8K row: the gold is the number after the solution's final `####`."""
    return Doc(task_name=task_name, query=line["question"], choices=[line["answer"].split("####")[-1].strip()],
               gold_index=0)


def math_500_doc(line: dict, task_name: str = None) -> Doc:
    """A MATH-500 row: the gold is its `answer` (LaTeX), not the worked solution."""
    return Doc(task_name=task_name, query=line["problem"], choices=[line["answer"]], gold_index=0)


def gsm_plus_doc(line: dict, task_name: str = None) -> Doc:
    """A GSM-Plus row (a perturbed GSM8K question); its gold is `answer`."""
    return Doc(task_name=task_name, query=line["question"], choices=[line["answer"]], gold_index=0)


def has_numeric_answer(line: dict) -> bool:
    """GSM-Plus's "critical thinking" rows ask what is missing from the question; their answer is "None"."""
    return line["perturbation_type"] != "critical thinking"


def hybrid_task(name: str, prompt_function, hf_repo: str, hf_subset: str, split: str, **extra) -> LightevalTaskConfig:
    return LightevalTaskConfig(
        name=name, prompt_function=prompt_function, hf_repo=hf_repo, hf_subset=hf_subset,
        hf_avail_splits=[split], evaluation_splits=[split], few_shots_split=None, few_shots_select=None,
        generation_size=32768,  # a long /think trace must not be cut; set max_new_tokens in generation_parameters
        metrics=[Metrics.pass_at_k_math(sample_params={"k": 1, "n": 1})], stop_sequence=[], version=0, **extra)


TASKS_TABLE = [
    hybrid_task("hybrid_gsm8k", gsm8k_doc, "openai/gsm8k", "main", "test"),
    hybrid_task("hybrid_math_500", math_500_doc, "HuggingFaceH4/MATH-500", "default", "test"),
    hybrid_task("hybrid_gsm_plus", gsm_plus_doc, "qintongli/GSM-Plus", "default", "test",
                hf_filter=has_numeric_answer),
]
