import pytest

from rlkit import progress


def test_an_interruption_that_was_swallowed_is_raised_at_the_next_phase(monkeypatch):
    monkeypatch.setattr(progress, "state", dict(progress.state))
    try:
        try:
            progress.interrupt(KeyboardInterrupt)
        except KeyboardInterrupt:
            pass  # where a finaliser or a callback drops it
        with pytest.raises(KeyboardInterrupt):
            progress.at("scoring", 2)
        assert progress.state["phase"] != "scoring"  # the phase did not start
    finally:
        progress.state["pending"] = None
    progress.at("scoring", 2)
    assert progress.where() == " at step 2 (scoring)"
