import math

from rlkit.rollout.base import Sample
from rlkit.shaping.transforms import outlier_cuts, truncate_sample


def test_outlier_cuts_hand_computed():
    lengths = [10, 10, 10, 10, 100, 10, 10, 10, 10, 100]
    correct = [1] * 5 + [1, 1, 0, 1, 1]  # group 1 is not all correct: untouched
    groups = [0] * 5 + [1] * 5
    # group 0: mean 28, sample std sqrt(1620) = 40.25; alpha 1 -> T = 68; 100 - 68 = 32 >= 32
    assert outlier_cuts(lengths, correct, groups, alpha=1.0, margin=32) == {4: 68}
    assert outlier_cuts(lengths, correct, groups, alpha=1.0, margin=33) == {}
    assert outlier_cuts(lengths, correct, groups, alpha=3.0, margin=32) == {}  # T = 148
    assert math.floor(28 + 1.0 * math.sqrt(1620)) == 68
    # alpha 1.25: T = floor(28 + 50.31) = 78, gap 22: cut with a fractional margin (max(int(100 * 0.1), 16) = 16),
    # not with 32 tokens
    assert outlier_cuts(lengths, correct, groups, alpha=1.25, margin=0.1) == {4: 78}
    assert outlier_cuts(lengths, correct, groups, alpha=1.25, margin=32) == {}
    # threshold below 1 lets group 1 (pass rate 0.8) in
    assert outlier_cuts(lengths, correct, groups, alpha=1.0, margin=32, success_threshold=0.8) == {4: 68, 9: 68}


class Tok:
    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


def test_truncate_sample_cuts_tokens_logprobs_versions_and_text():
    s = Sample([1], [5, 6, 7, 8], [-0.1, -0.2, -0.3, -0.4], "stop", "5 6 7 8", 0, [3, 3, 4, 4])
    t = truncate_sample(s, 2, Tok().decode)
    assert (t.completion_ids, t.logprobs, t.versions, t.text, t.finish_reason) == (
        [5, 6], [-0.1, -0.2], [3, 3], "5 6", "length")
    assert s.completion_ids == [5, 6, 7, 8]  # the original is not modified
