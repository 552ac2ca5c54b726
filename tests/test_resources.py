"""What one trial asks Ray for, sized from the shape of the machine or cluster."""
import pytest


# a CPU-only head of 8 CPUs and two workers of 8 CPUs and 1 GPU each (issue 13, item 4)
CLUSTER = [{"CPU": 8.0, "GPU": 0.0}, {"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 1.0}]


@pytest.mark.parametrize("gpus, want_cpus, want_slots", [(None, 8, 2), (1, 8, 2), (0.5, 4, 4), (0.25, 2, 8)])
def test_cpus_per_trial_are_sized_from_the_nodes_that_hold_the_gpus(gpus, want_cpus, want_slots):
    from tune.resources import per_trial, slots
    res = per_trial(gpus, None, CLUSTER)
    assert res == {"cpu": want_cpus, "gpu": gpus or 1.0}
    assert slots(res, CLUSTER) == want_slots


def test_a_trial_no_single_node_can_hold_is_refused():
    from tune.cli import UsageError
    from tune.resources import per_trial
    with pytest.raises(UsageError, match="no node can hold it"):
        per_trial(1, 12, CLUSTER)   # 24 CPUs in all, but 8 on any node
    with pytest.raises(UsageError, match="a trial trains on one GPU"):
        per_trial(2, None, CLUSTER)
    assert per_trial(0, None, CLUSTER) == {"cpu": 2, "gpu": 0}   # CPU trials: a quarter of the largest node


def test_a_cluster_still_scaling_up_is_not_refused_what_its_autoscaler_may_add(capsys):
    from tune.cli import UsageError
    from tune.resources import per_trial
    head_only = [{"CPU": 8.0, "GPU": 0.0}]
    with pytest.raises(UsageError, match="this machine has none"):
        per_trial(1, 8, head_only)
    with pytest.raises(UsageError, match="give --cpus-per-trial too"):
        per_trial(1, None, head_only, cluster=True)   # nothing to size the CPUs from yet
    assert per_trial(1, 8, head_only, cluster=True) == {"cpu": 8, "gpu": 1}
    assert "(no node has a GPU) yet; its trials wait PENDING" in capsys.readouterr().out
    no_cpus = [{"CPU": 0.0, "GPU": 0.0}]   # a head started with --num-cpus 0, to keep trials off it
    with pytest.raises(UsageError, match="CPU trials need CPUs, but this cluster has none yet; give --cpus-per-trial"):
        per_trial(0, None, no_cpus, cluster=True)
    assert per_trial(0, 2, no_cpus, cluster=True) == {"cpu": 2, "gpu": 0}
    assert "(no node has CPUs) yet; its trials wait PENDING" in capsys.readouterr().out
