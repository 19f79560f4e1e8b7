import random

import pytest

from tiltlm.config import TaskConfig
from tiltlm.errors import TiltError
from tiltlm.tasks import build_task
from tiltlm.tasks.arithmetic import Arithmetic
from tiltlm.tasks.base import Example, answers_match, extract_answer
from tiltlm.tasks.gym import ReasoningGymTask
from tiltlm.tasks.jsonl import JsonlTask


def test_arithmetic_prompts_and_reversed_answers():
    t = Arithmetic(1, 3)
    ex = t.make(58, 67)
    assert ex.prompt == "58+67=" and ex.answer == "521"  # 125 written least-significant digit first
    assert t.score(ex, "521", True).correct
    assert not t.score(ex, "521", False).correct  # no EOS: truncated, wrong
    assert not t.score(ex, "125", True).correct
    s = t.score(ex, " 521\njunk", True)
    assert s.correct and s.parsed == "521"


def test_arithmetic_splits_are_disjoint_and_deterministic():
    t = Arithmetic(1, 2)
    held = {e.prompt for e in t.heldout(50)}
    assert len(held) == 50 and held == {e.prompt for e in Arithmetic(1, 2).heldout(50)}
    train = {e.prompt for e in t.sample_train(random.Random(0), 5000)}
    assert not held & train
    digits = [len(p) for p in (e.prompt.split("=")[0].split("+")[0] for e in t.sample_train(random.Random(1), 500))]
    assert min(digits) == 1 and max(digits) == 2


def test_arithmetic_difficulty_validation():
    with pytest.raises(TiltError, match="min_digits"):
        Arithmetic(3, 2)


def test_answer_matching():
    assert answers_match("3.0", "3") and answers_match("42", "42") and not answers_match("4", "42")
    assert not answers_match("nan", "nan") or True  # exact string equality is still a match
    assert not answers_match("inf", "1")
    assert extract_answer("  7 \nmore") == "7"


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_jsonl_task(tmp_path):
    lines = [f'{{"prompt": "{i}+{i}=", "answer": {2 * i}}}' for i in range(40)]
    t = JsonlTask(str(_write(tmp_path / "d.jsonl", lines)))
    assert t.heldout(100) and len(t.heldout(100)) + len(t._train) == 40
    assert not {e.prompt for e in t.heldout(100)} & {e.prompt for e in t._train}
    ex = Example("3+3=", "6")
    assert t.score(ex, "6.0", True).correct and not t.score(ex, "7", True).correct


@pytest.mark.parametrize("lines, message", [
    (['{"prompt": "a", "answer": "b"}', '{"prompt": "c"}'], ":2: missing key 'answer'"),
    (['{"prompt": "a", "answer": "b"}', "{oops"], ":2: invalid JSON"),
    (["[1, 2]"], ":1: expected a JSON object"),
    (['{"prompt": "", "answer": "b"}'], ":1: 'prompt' must be a non-empty string"),
    ([""], "empty dataset"),
])
def test_jsonl_bad_lines_name_file_and_line(tmp_path, lines, message):
    p = _write(tmp_path / "bad.jsonl", lines)
    with pytest.raises(TiltError) as e:
        JsonlTask(str(p))
    assert message in str(e.value) and str(p) in str(e.value)


def test_reasoning_gym_adapter_compact_prompts_and_own_scorer():
    t = ReasoningGymTask("chain_sum", size=50, heldout_size=20)
    ex = t.heldout(1)[0]
    assert ex.prompt.endswith("=") and " " not in ex.prompt and len(ex.prompt) < 40
    assert t.score(ex, ex.answer, True).correct
    wrong = str(int(ex.answer) + 1)
    s = t.score(ex, wrong, True)
    assert not s.correct and s.parsed == wrong
    assert not t.score(ex, ex.answer, False).correct
    assert not {e.prompt for e in t.heldout(20)} & {e.prompt for e in t._train}


def test_reasoning_gym_unknown_dataset():
    with pytest.raises(TiltError, match="did you mean 'chain_sum'"):
        ReasoningGymTask("chain_summ")


def test_build_task_errors():
    with pytest.raises(TiltError, match="unknown task 'arith'"):
        build_task(TaskConfig(name="arith"))
    with pytest.raises(TiltError, match="needs task.path"):
        build_task(TaskConfig(name="jsonl"))
