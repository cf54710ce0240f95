"""The sample fleet tasks of worker_images/sqs_worker, through the worker's Task interface."""

from __future__ import annotations

import importlib.util
import json

from pipeline_constructs.fleet.worker.task import Task
from tests.support import ROOT

spec = importlib.util.spec_from_file_location("sample_task", ROOT / "worker_images" / "sqs_worker" / "task.py")
sample = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sample)


class MemoryS3:
    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects

    def get_object(self, Bucket, Key):
        import io

        return {"Body": io.BytesIO(self.objects[Key])}

    def put_object(self, Bucket, Key, Body, **_):
        if Key in self.objects and _.get("IfNoneMatch") == "*":
            raise AssertionError("written twice")
        self.objects[Key] = Body.encode() if isinstance(Body, str) else Body


def test_csv_stats_writes_statistics_of_numeric_columns_only():
    s3 = MemoryS3({"stage/input/a.csv": b"id,name,price\n1,x,2.0\n2,y,4.0\n3,z,6.0\n"})
    task = Task(id="a.csv", body={"key": "a.csv"}, message_id="m", attempt=1, bucket="b", prefix="stage/", _s3=s3)
    assert sample.csv_stats(task) == {"columns": 2}
    stats = json.loads(s3.objects["stage/output/a.csv/stats.json"])
    assert set(stats) == {"id", "price"}
    assert stats["price"] == {"count": 3, "mean": 4.0, "min": 2.0, "max": 6.0, "stddev": (8 / 3) ** 0.5}


def test_summarize_reads_the_forwarded_stats():
    stats = {"price": {"count": 3}, "id": {"count": 3}}
    s3 = MemoryS3({"stage/output/a.csv/stats.json": json.dumps(stats).encode()})
    body = {"key": "a.csv", "outputs": ["stage/output/a.csv/stats.json"]}
    task = Task(id="a.csv", body=body, message_id="m", attempt=1, bucket="b", prefix="next/", _s3=s3)
    assert sample.summarize(task) == {"source": "stage/output/a.csv/stats.json", "columns": ["id", "price"], "rows": 3}
    assert "next/output/a.csv/summary.json" in s3.objects
