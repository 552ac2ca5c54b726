"""TensorBoard for trials and final runs alike: the same plain tags, and one HParams table of them all.

Per epoch only what a person compares (SCALARS), with the epoch as the step. When a run ends, its HParams
session: its config, a status, and three summary scalars for the table (summary/...). The table's columns
come from one experiment summary written at the root of a search's folder (TensorBoard reads it from the
only run that has one): the searched parameters, then the status, then the metrics in METRICS' order.
The protos are built here because TensorBoard's own hparams summary API needs TensorFlow.
"""
from __future__ import annotations

import time
from pathlib import Path

SCALARS = ("accuracy", "valid_loss", "train_loss", "lr", "images_per_s", "accuracy_tta")
METRICS = (("accuracy", "accuracy"), ("summary/best_accuracy", "best accuracy"), ("accuracy_tta", "accuracy, TTA"),
           ("valid_loss", "valid_loss"), ("summary/epochs", "epochs"), ("summary/train_s", "training s"))
STATUSES = ("completed", "pruned", "stopped", "errored")   # stopped: by the search's time budget


def _plugin_summary(tag: str, **data):
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2
    content = plugin_data_pb2.HParamsPluginData(version=metadata.PLUGIN_DATA_VERSION, **data)
    meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME,
                                                                  content=content.SerializeToString()))
    return Summary(value=[Summary.Value(tag=tag, metadata=meta)])


def experiment_summary(params: dict):
    """The HParams experiment of a search: `params` is {key: (kind, args)} of the searched keys, in order."""
    from google.protobuf.struct_pb2 import ListValue
    from tensorboard.plugins.hparams import api_pb2, metadata
    infos = []
    for key, (kind, args) in params.items():
        if kind == "choice":
            kinds = {type(a) for a in args}
            dtype = ("DATA_TYPE_STRING" if str in kinds else "DATA_TYPE_BOOL" if kinds == {bool}
                     else "DATA_TYPE_FLOAT64")
            values = ListValue()
            values.extend([a if isinstance(a, (str, bool)) else float(a) for a in args])
            infos.append(api_pb2.HParamInfo(name=key, type=api_pb2.DataType.Value(dtype), domain_discrete=values))
        else:
            infos.append(api_pb2.HParamInfo(name=key, type=api_pb2.DataType.Value("DATA_TYPE_FLOAT64"),
                                            domain_interval=api_pb2.Interval(min_value=args[0], max_value=args[1])))
    statuses = ListValue()
    statuses.extend(list(STATUSES))
    # TensorBoard orders the columns by `differs`, then by name, and shows the first five: status first
    infos.insert(0, api_pb2.HParamInfo(name="status", type=api_pb2.DataType.Value("DATA_TYPE_STRING"),
                                       domain_discrete=statuses, differs=True))
    metrics = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag), display_name=shown) for tag, shown in METRICS]
    experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=metrics, time_created_secs=time.time())
    return _plugin_summary(metadata.EXPERIMENT_TAG, experiment=experiment)


def write_events(path: Path, *summaries) -> Path:
    """An event file of these summaries, published whole (TensorBoard reads any file named *tfevents*)."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.record_writer import RecordWriter

    from .files import atomic_file

    def build(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            w = RecordWriter(f)
            w.write(Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())
            for s in summaries:
                w.write(Event(wall_time=time.time(), step=0, summary=s).SerializeToString())
            w.flush()
    return atomic_file(Path(path), build)


def log_epoch(writer, row: dict) -> None:
    for k in SCALARS:
        v = row.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v:
            writer.add_scalar(k, v, row["epoch"])
    writer.flush()


def log_session(writer, config: dict, status: str, history: list[dict], train_s: float | None,
                started: float) -> None:
    """The run's row of the HParams table: its config and status, and its summary metrics."""
    from google.protobuf.struct_pb2 import Value
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
    step = history[-1]["epoch"] if history else 0
    best = max((h["accuracy"] for h in history if h.get("accuracy") is not None), default=None)
    for tag, v in (("summary/best_accuracy", best), ("summary/epochs", len(history)), ("summary/train_s", train_s)):
        if v is not None:
            writer.add_scalar(tag, v, step)
    hparams = {}
    for k, v in {**config, "status": status}.items():
        if isinstance(v, bool):
            hparams[k] = Value(bool_value=v)
        elif isinstance(v, (int, float)):
            hparams[k] = Value(number_value=float(v))
        elif v is not None:
            hparams[k] = Value(string_value=str(v))
    start = plugin_data_pb2.SessionStartInfo(hparams=hparams, start_time_secs=started)
    ok = api_pb2.Status.Value("STATUS_FAILURE" if status == "errored" else "STATUS_SUCCESS")
    end = plugin_data_pb2.SessionEndInfo(status=ok, end_time_secs=time.time())
    fw = writer._get_file_writer()
    fw.add_summary(_plugin_summary(metadata.SESSION_START_INFO_TAG, session_start_info=start), step)
    fw.add_summary(_plugin_summary(metadata.SESSION_END_INFO_TAG, session_end_info=end), step)
    writer.flush()
