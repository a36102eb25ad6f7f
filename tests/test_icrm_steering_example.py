"""examples/icrm_steering.py at its small size: accuracy rises with the number of in-context
demonstrations, and steering with test-time weights reaches a larger hypervolume than a
fixed-weight model (issue 11 §6)."""
import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _example():
    spec = importlib.util.spec_from_file_location("icrm_steering", ROOT / "examples" / "icrm_steering.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_icrm_steering_small(tmp_path):
    out = _example().run(small=True, seed=0, png=str(tmp_path / "steer.png"), verbose=False)
    acc = out["accuracy"]
    assert len(acc) == 17
    assert acc[16] > acc[0] + 0.08  # the rise: demonstrations reveal the user's weight
    assert min(acc[8:]) > max(acc[:2])
    assert sum(acc[9:]) / 8 > sum(acc[1:9]) / 8 > acc[0]
    hv = out["hypervolume"]
    assert hv["fixed"] < hv["steer"] <= hv["pareto"] + 1e-9
    assert (tmp_path / "steer.png").stat().st_size > 1000
