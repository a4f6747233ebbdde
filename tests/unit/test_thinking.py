"""Thinking-aware lengths (rollout.thinking, rlkit.rollout.thinking): the split of each completion at ``</think>``
with the embedded SmolLM2 tokenizer and a template that opens the thinking (``<think>`` ends the prompt), and the
one counted length (``Sample.length``) that the length rewards, the shapers, DOT, the held-out budgets and the
metrics read, while the token layout keeps every token."""

from types import SimpleNamespace

import pytest
import torch

from rlkit.config import ConfigError, RewardTerm, load_config
from rlkit.records import Prompt, Sample, StepBatch, UpdateStats
from rlkit.rewards import RewardSet
from rlkit.rewards.combine import reward_inputs
from rlkit.rollout.base import SamplingSpec
from rlkit.rollout.forcing import BudgetForcing, ForcedRollout
from rlkit.rollout.thinking import ThinkingSplit, annotate
from rlkit.trainers.update import prepare_tokens

MARKER = "</think>"


@pytest.fixture(scope="module")
def tok():
    from rlkit.models import embedded_model_path, load_tokenizer

    return load_tokenizer(str(embedded_model_path()))


@pytest.fixture(scope="module")
def split(tok):
    return ThinkingSplit.for_tokenizer(MARKER, tok)


def enc(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


# thinking text, answer text: a long thinking with a short answer, a short thinking with a long answer
PARTS = [("Two plus three: 2 + 3 = 5. Let me check again, 3 + 2 = 5 as well, so it is five.\n", "\n\\boxed{5}"),
         ("2 + 3 = 5.\n", "\nWe add the two numbers, two and three, and get five, the final answer: \\boxed{5}")]


def prompt(tok):
    """The chat template with the thinking opened by the prompt (as Qwen3's and DeepSeek-R1's templates do)."""
    text = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], tokenize=False,
                                   add_generation_prompt=True) + "<think>\n"
    return Prompt(ids=enc(tok, text), text=text, columns={"question": "What is 2 + 3?", "answer": "5"})


def samples(tok, parts=PARTS, group=0):
    """Completions = thinking + the marker + answer, built from their token ids: (samples, expected think tokens)."""
    out, think = [], []
    for thinking, answer in parts:
        ids = enc(tok, thinking) + enc(tok, MARKER) + enc(tok, answer)
        think.append(len(enc(tok, thinking)) + len(enc(tok, MARKER)))
        out.append(Sample([1], ids, [-1.0] * len(ids), "stop", tok.decode(ids), group))
    return out, think


# --- the split ---------------------------------------------------------------------------------------------------


def test_the_marker_is_found_in_the_token_ids(tok, split):
    assert split.end_ids == (9617, 17400, 46)  # "</" "think" ">": the marker encoded once, no special tokens
    batch, think = samples(tok)
    annotate(split, batch)
    for s, t in zip(batch, think):
        assert s.think_tokens == t and s.completion_ids[t - 3:t] == list(split.end_ids)
        assert s.length("think") == t and s.length("answer") == s.num_tokens - t and s.length() == s.num_tokens
        assert MARKER in tok.decode(s.completion_ids[:t]) and MARKER not in tok.decode(s.completion_ids[:t - 1])


def test_a_marker_spelled_with_other_tokens_is_found_in_the_text(tok, split):
    ids = enc(tok, "ok </think> A")  # " </" is one token here: the marker's ids do not occur
    assert [tok.decode([i]) for i in ids] == ["ok", " </", "think", ">", " A"]
    assert split.think_end(ids) == 4  # the shortest prefix whose text holds the marker: "ok </think>"
    ids = enc(tok, "a.</think>b</think>c")  # the first marker wins
    assert split.think_end(ids) == len(enc(tok, "a.")) + 3


def test_a_completion_without_the_marker_is_all_thinking(tok, split):
    ids = enc(tok, "I keep thinking about 2 + 3 and never stop")
    s = Sample([1], ids, [], "length", "", 0)
    annotate(split, [s])
    assert split.think_end(ids) is None and s.think_tokens == len(ids)
    assert (s.length("think"), s.length("answer")) == (len(ids), 0)
    assert ThinkingSplit.for_tokenizer("", tok) is None  # no marker: no split
    annotate(None, [s])  # nothing to do without a split


def test_a_cut_before_the_marker_leaves_a_thinking_that_never_closed(tok, split):
    from rlkit.shaping.transforms import truncate_sample

    s = samples(tok)[0][0]
    annotate(split, [s])
    think = s.think_tokens
    inside = truncate_sample(s, think - 5, tok.decode)
    assert (inside.length("think"), inside.length("answer")) == (think - 5, 0)
    after = truncate_sample(s, think + 2, tok.decode)
    assert (after.length("think"), after.length("answer")) == (think, 2)
    assert s.counted_from("answer") == think and s.counted_from("think") == s.counted_from() == 0


def test_defaults_are_unchanged_and_a_missing_split_is_an_error(tok):
    batch, _ = samples(tok)
    _, _, ids, _, context = reward_inputs([prompt(tok)], batch)
    assert context["num_tokens"] == [len(i) for i in ids] == [s.num_tokens for s in batch]
    step = StepBatch([prompt(tok)], batch)
    assert step.length_count == "all" and step.lengths.tolist() == step.num_tokens.tolist()
    with pytest.raises(ValueError, match="needs the thinking split"):
        batch[0].length("think")
    from rlkit.trainers.collect import annotate_lengths

    run = SimpleNamespace(cfg=load_config())  # no marker: nothing is split, nothing else is read
    annotate_lengths(run, step)
    assert all(s.think_tokens is None for s in batch) and step.length_count == "all"


# --- what the length decisions see -------------------------------------------------------------------------------


def _thinking_run(tok, count, **extra):
    cfg = load_config(overrides={"rollout.thinking.end": MARKER, "rollout.thinking.count": count})
    return SimpleNamespace(cfg=cfg, thinking=ThinkingSplit.for_tokenizer(MARKER, tok), **extra)


@pytest.mark.parametrize("term", ["truncation", "laser_step"])
def test_length_rewards_see_the_counted_tokens(tok, term):
    """The issue's done-when: with a <think> template the length terms see other lengths under each count."""
    from rlkit.trainers.collect import annotate_lengths, score

    batch, think = samples(tok)
    total = [s.num_tokens for s in batch]
    answer = [n - t for n, t in zip(total, think)]
    cap = max(think[1], answer[0])  # the short thinking and the short answer fit under it, nothing else does
    assert cap < min(think[0], answer[1])
    kwargs = {"max_tokens": cap} if term == "truncation" else {"target_tokens": cap}
    seen = {}
    for count in ("all", "think", "answer"):
        rewards = RewardSet.from_config([RewardTerm(term, 1.0, kwargs), RewardTerm("math_correct", 0.0)])
        run = _thinking_run(tok, count, rewards=rewards)
        step = StepBatch([prompt(tok)], [Sample(**vars(s)) for s in batch])
        annotate_lengths(run, step)
        score(run, step, step=0)
        assert step.correct.tolist() == [1.0, 1.0]
        seen[count] = step.terms[term].tolist()
        counted = {"all": total, "think": think, "answer": answer}[count]
        assert step.lengths.tolist() == counted
        _, _, _, _, context = reward_inputs(step.prompts, step.samples, count)
        assert context["num_tokens"] == counted
        hit = 1.0 if term == "truncation" else 0.5
        assert seen[count] == [hit if n <= cap else 0.0 for n in counted]
    hit = 1.0 if term == "truncation" else 0.5
    assert seen == {"all": [0.0, 0.0], "think": [0.0, hit], "answer": [hit, 0.0]}


def test_the_shapers_get_the_counted_lengths(tok):
    from accelerate import Accelerator

    from rlkit import registry
    from rlkit.trainers.collect import annotate_lengths, shape

    batch, think = samples(tok, PARTS + PARTS[::-1])
    total = [s.num_tokens for s in batch]
    got = {}
    for count in ("all", "think", "answer"):
        seen = []
        kimi = registry.build(registry.resolve("shaper", "kimi"), {"coef": 0.4})

        def spy(b, kimi=kimi, seen=seen):
            seen.append(b.lengths.tolist())
            return kimi(b)

        run = _thinking_run(tok, count, acc=Accelerator(cpu=True),
                            stages=SimpleNamespace(shapers=[("kimi", spy)], needs_looping=False))
        r = torch.ones(4)
        step = StepBatch([prompt(tok)], [Sample(**vars(s)) for s in batch], rewards=r, terms={"c": r.clone()},
                         correct=r.clone())
        annotate_lengths(run, step)
        shape(run, step, 0)
        expected = {"all": total, "think": think, "answer": [n - t for n, t in zip(total, think)]}[count]
        assert seen == [expected]
        got[count] = step.shaped.tolist()
    # Kimi rewards the shortest: the long-thinking sample is shortest in answer tokens, not in thinking tokens
    assert got["think"][0] < got["think"][1] and got["answer"][0] > got["answer"][1]
    # the advantage's token weights keep every token
    assert StepBatch([], batch, length_count="think").num_tokens.tolist() == total
    # a filter's rounds keep the count (selected and concatenated groups)
    annotate(ThinkingSplit.for_tokenizer(MARKER, tok), batch)
    step = StepBatch([prompt(tok)], batch, length_count="think")
    assert step.select_groups([0]).length_count == "think"
    assert StepBatch.concat([step, step]).lengths.tolist() == think * 2


def test_dot_cuts_the_counted_outlier():
    from rlkit.shaping.transforms import DotTruncation

    def dot(think, answer, count):
        samples = [Sample([1], list(range(10, 10 + t + a)), [-1.0] * (t + a), "stop", "", 0, think_tokens=t)
                   for t, a in zip(think, answer)]
        b = StepBatch([Prompt([1], "q", {})], samples, correct=torch.ones(len(samples)), length_count=count)
        rescored = []
        ctx = SimpleNamespace(decode=lambda ids: f"{len(ids)}", rescore=lambda b, idx: rescored.append(idx))
        DotTruncation(alpha=1.0, margin=32)(b, ctx)
        return b.samples, rescored

    # equal totals (110): no outlier in all tokens or in answer tokens; one in the thinking: lengths 10 x 4 and
    # 100, T = floor(28 + sqrt(1620)) = 68 and 100 - 68 >= 32
    for count in ("all", "answer"):
        out, rescored = dot([10] * 4 + [100], [100] * 4 + [10], count)
        assert [s.num_tokens for s in out] == [110] * 5 and rescored == []
    out, rescored = dot([10] * 4 + [100], [100] * 4 + [10], "think")
    assert [s.num_tokens for s in out] == [110] * 4 + [68] and rescored == [[4]]
    assert (out[4].length("think"), out[4].length("answer"), out[4].finish_reason) == (68, 0, "length")
    # counting the answer: the answer is cut to T tokens after the thinking
    out, _ = dot([10] * 5, [10] * 4 + [100], "answer")
    assert (out[4].num_tokens, out[4].length("think"), out[4].length("answer")) == (78, 10, 68)


def test_metrics_report_thinking_and_answer_tokens(tok, split):
    from accelerate import Accelerator

    from rlkit.trainers.metrics import step_metrics

    batch, think = samples(tok)
    annotate(split, batch)
    r = torch.ones(2)
    step = StepBatch([prompt(tok)], batch, rewards=r, terms={"c": r.clone()}, correct=r.clone(),
                     length_count="think")
    kw = dict(trained_mask=torch.ones(1, 1), mu=1, lr=1.0, timers={}, version=0, acc=Accelerator(cpu=True))
    m = step_metrics(step, UpdateStats(), thinking=True, **kw)
    total = [s.num_tokens for s in batch]
    assert m["completion/think_tokens"] == pytest.approx(sum(think) / 2)
    assert m["completion/answer_tokens"] == pytest.approx((sum(total) - sum(think)) / 2)
    assert m["completion/mean_tokens"] == pytest.approx(sum(total) / 2)  # every token, whatever the count
    plain = step_metrics(step, UpdateStats(), **kw)
    assert "completion/think_tokens" not in plain and "completion/answer_tokens" not in plain


# --- budget forcing with the marker -------------------------------------------------------------------------------


class _Engine:
    """Thinking that never closes within the cap; an answer after a forced marker."""

    version = 1

    def __init__(self, tok):
        self.tok, self.calls = tok, []

    def wake(self):
        pass

    def sleep(self):
        pass

    def generate(self, prompts, spec):
        self.calls.append(spec)
        specs = spec if isinstance(spec, list) else [spec] * len(prompts)
        out = []
        for k, (p, s) in enumerate(zip(prompts, specs)):
            for _ in range(s.n):
                ids = enc(self.tok, "\n\\boxed{5}")[:s.max_new_tokens] if s.max_new_tokens <= 8 else \
                    (enc(self.tok, "let me think " * 40))[:s.max_new_tokens]
                out.append(Sample(list(p), ids, [-0.5] * len(ids), "stop" if s.max_new_tokens <= 8 else "length",
                                  self.tok.decode(ids), k, [self.version] * len(ids)))
        return out


def test_forcing_the_marker_ends_the_thinking_and_stays_out_of_the_loss(tok, split):
    forcing = BudgetForcing.for_tokenizer((12, 20), MARKER, 8, tok)
    assert forcing.phrase_ids == list(split.end_ids)
    rollout = ForcedRollout(_Engine(tok), forcing, seed=0)
    batch = rollout([prompt(tok)], SamplingSpec(n=2, max_new_tokens=40), step=0)
    budget = rollout.budget_of(batch.prompts[0], 0)
    annotate(split, batch.samples)  # the trainer's split (rlkit.trainers.collect.annotate_lengths) after the rollout
    for s in batch.samples:
        assert s.injected == [budget, budget + 1, budget + 2]
        assert s.think_tokens == budget + 3 and s.length("answer") == s.num_tokens - budget - 3 > 0
        assert s.text.count(MARKER) == 1
    step = prepare_tokens(StepBatch(batch.prompts, batch.samples))
    for i in range(len(step.samples)):  # the injected marker is never trained
        assert step.mask[i, budget:budget + 3].tolist() == [0.0] * 3 and float(step.mask[i, :budget].sum()) == budget


def test_held_out_budgets_count_the_thinking(tok, split):
    from rlkit.evals.budgets import at_budget, finished_within
    from rlkit.evals.suite import EvalSettings, run_benchmark

    batch, think = samples(tok)  # sample 1 closes its thinking early, sample 0 late
    annotate(split, batch)
    b = think[1]
    assert finished_within(batch[1], b, "think") and not finished_within(batch[1], b)  # its answer runs on
    import dataclasses

    cut = dataclasses.replace(batch[1], finish_reason="length")  # a thinking budget leaves a long answer alone
    assert finished_within(cut, b, "think") and not finished_within(cut, b, "answer")
    assert not finished_within(batch[0], b, "think")
    forcing = BudgetForcing.for_tokenizer((b, 64), MARKER, 8, tok)
    engine = _Engine(tok)
    seen, forced = at_budget(engine, [prompt(tok)], batch, b, forcing, "think")
    assert forced == [True, False] and seen[1] is batch[1]
    assert seen[0].completion_ids[:b] == batch[0].completion_ids[:b] and seen[0].think_tokens is None
    annotate(split, [seen[0]])
    assert seen[0].length("think") == b + 3  # cut after b thinking tokens, the marker forced
    # the same through the held-out benchmark: the verifier's num_tokens are the thinking tokens
    got = []

    def accuracy(prompts, completions, completion_ids, num_tokens, **kw):
        got.append(list(num_tokens))
        return [1.0] * len(completions)

    class Fixed(_Engine):
        def generate(self, prompts, spec):
            return [Sample(list(prompts[0]), list(s.completion_ids), [], s.finish_reason, s.text, 0)
                    for s in samples(tok)[0][:1]] if spec.max_new_tokens > 8 else super().generate(prompts, spec)

    run_benchmark(Fixed(tok), [prompt(tok)], accuracy, EvalSettings.greedy(), 64, label="t", progress=False,
                  forcing=forcing, thinking=split, count="think")
    assert got == [[b + 3], [think[0]]]


# --- the config ----------------------------------------------------------------------------------------------------


def test_counting_a_part_needs_the_marker_and_old_configs_load_unchanged(tmp_path):
    for count in ("think", "answer"):
        with pytest.raises(ConfigError, match="'rollout.thinking.count' is .* 'rollout.thinking.end' is empty"):
            load_config(overrides={"rollout.thinking.count": count})
    with pytest.raises(ConfigError, match="'rollout.thinking.end' is '  '"):
        load_config(overrides={"rollout.thinking.end": "  "})
    with pytest.raises(ConfigError, match="rollout.thinking.count"):
        load_config(overrides={"rollout.thinking.count": "reasoning"})
    old = tmp_path / "old.yaml"
    old.write_text("rollout:\n  max_new_tokens: 64\n  group_size: 4\n")
    cfg = load_config(str(old))
    assert (cfg.rollout.thinking.end, cfg.rollout.thinking.count) == ("", "all")
    cfg = load_config(overrides={"rollout.thinking": {"end": MARKER, "count": "think"}})
    assert (cfg.rollout.thinking.end, cfg.rollout.thinking.count) == (MARKER, "think")
