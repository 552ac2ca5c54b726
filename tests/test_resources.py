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


@pytest.mark.parametrize("gpus, want", [(0.25, 32), (0.4, 16), (0.5, 16), (0.75, 8), (1, 8)])
def test_a_fraction_of_a_gpu_counts_the_places_on_each_gpu(gpus, want):
    """Ray splits each GPU, not the node's sum: at 0.4, 2 trials fit on a GPU (0.8), not 2.5."""
    from tune.resources import slots
    assert slots({"cpu": 1, "gpu": gpus}, [{"CPU": 64.0, "GPU": 8.0}]) == want


def test_a_cluster_without_gpu_nodes_says_its_trials_train_on_cpus(capsys):
    from tune.resources import per_trial
    assert per_trial(None, None, [{"CPU": 8.0, "GPU": 0.0}], cluster=True) == {"cpu": 2, "gpu": 0}
    assert "no node of this cluster has a GPU now, so its trials train on CPUs" in capsys.readouterr().out
    per_trial(None, None, [{"CPU": 8.0, "GPU": 0.0}])   # one machine without GPUs: nothing to say
    assert capsys.readouterr().out == ""


def test_without_address_a_cluster_ray_would_join_is_refused_and_a_stale_one_is_not(tmp_path, monkeypatch):
    """Ray's ray.init() joins RAY_ADDRESS, or the address `ray start` left in <temp>/ray/ray_current_cluster;
    the search refuses both in one line, unless the file is stale (its cluster gone)."""
    import socket
    import ray
    from tune.cli import UsageError
    from tune.resources import cluster_here, start_ray
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    with pytest.raises(UsageError, match=r"RAY_ADDRESS is set \(10.0.0.5:6379\), as in a Ray job: to search on it "
                                         r"give --address 10.0.0.5:6379 and --storage"):
        start_ray(None)
    assert not ray.is_initialized()
    # --resume takes no --address: only the other way out is offered
    assert cluster_here(resume=True) == ("RAY_ADDRESS is set (10.0.0.5:6379), as in a Ray job: to resume this "
                                         "search on a Ray of its own, unset RAY_ADDRESS")
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")   # the Jobs CLI's address, not one ray.init joins
    assert cluster_here() is None
    monkeypatch.delenv("RAY_ADDRESS")
    assert cluster_here() is None   # no `ray start` here
    (tmp_path / "ray").mkdir()
    with socket.socket() as gcs:
        gcs.bind(("127.0.0.1", 0))
        gcs.listen()
        address = "127.0.0.1:%d" % gcs.getsockname()[1]
        (tmp_path / "ray" / "ray_current_cluster").write_text(address)
        assert cluster_here().startswith(f"a Ray cluster started with `ray start` runs on this machine ({address}): "
                                         f"to search on it give --address {address}")
        assert "--address" not in cluster_here(resume=True)
    assert cluster_here() is None   # the file outlived its cluster
