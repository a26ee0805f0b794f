"""The job service: the queries chat shows and the job rules chat no longer decides (whose quota
counts, resume vs. train on), against a real SQLite job store in a temporary folder."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import ValidationError, model_validator

from jobs.errors import JobError
from jobs.executors.local import LocalExecutor
from jobs.gpus import gpus_wanted, renumbered
from jobs.manager import JobManager
from jobs.params import validate
from jobs.records import FAILED, QUEUED, RUNNING, STOPPED, SUCCEEDED, Job, Sweep
from jobs.schemas import Device, JobKind, JobParams, KindRegistry, MXNetParams, param, parse_contexts
from jobs.service import (
    Continue,
    JobService,
    Limits,
    NeedsChanges,
    NoCheckpoint,
    admission,
    continuation,
    may_control,
    needs_control,
    quota,
)


@pytest.fixture
def service(tmp_path: Path) -> JobService:
    return JobService.open(tmp_path / "chatops.db")


def add(service: JobService, job_id: str, state: str, owner: str = "tg:1", **fields: Any) -> Job:
    """A job inserted as the manager would; each one newer than the last."""
    newest = max((j.created_at for j in service.jobs(limit=1)), default=time.time())
    job = Job(id=job_id, kind="mlp", params={}, state=state, owner=owner, job_dir=f"/tmp/{job_id}",
              created_at=newest + 1.0, **fields)  # fmt: skip
    with service.transaction():
        service.store.insert(job)
    return job


def test_a_job_that_did_not_succeed_resumes_and_is_its_owners_to_control(service: JobService) -> None:
    for state in (STOPPED, FAILED):
        job = add(service, f"a{state[0]}", state, checkpoint="/tmp/x/ckpt")
        assert continuation(job, changed=False) is Continue.RESUME
        assert continuation(job, changed=True) is Continue.RESUME
        assert needs_control(job)


def test_a_succeeded_job_trains_on_only_from_a_checkpoint_and_with_a_change(service: JobService) -> None:
    done = add(service, "b1", SUCCEEDED, checkpoint="/tmp/b1/ckpt")
    assert continuation(done, changed=True) is Continue.TRAIN_ON
    assert not needs_control(done)  # training on leaves that job as it was: anyone's to train on from
    with pytest.raises(NeedsChanges):
        continuation(done, changed=False)
    bare = add(service, "b2", SUCCEEDED)
    # Without a checkpoint, that is what is said, whether or not something changed.
    for changed in (False, True):
        with pytest.raises(NoCheckpoint):
            continuation(bare, changed=changed)
    assert issubclass(NoCheckpoint, JobError) and issubclass(NeedsChanges, JobError)


def test_a_quota_counts_every_identity_of_the_person_in_any_case(service: JobService) -> None:
    limits = Limits(max_running=1, max_queued=2, max_gpus=None)
    ana = quota(limits, (["TG:1", "slack:U9"], "ana"))
    assert ana.owners == frozenset({"tg:1", "slack:u9"})
    assert (ana.name, ana.max_running, ana.max_queued, ana.max_gpus) == ("ana", 1, 2, None)
    running = add(service, "c1", RUNNING, owner="Slack:U9")
    queued = add(service, "c2", QUEUED, owner="tg:1")
    assert ana.holds(running) and ana.holds(queued)
    assert "ana has 1 running job(s)" in (ana.waits(queued, service.active()) or "")


def test_admission_asks_only_when_a_running_limit_is_set(service: JobService) -> None:
    people = {"tg:1": (["tg:1", "mx:@ana"], "ana"), "tg:2": (["tg:2"], "bo")}
    assert admission(Limits(max_queued=3), people.__getitem__) is None  # queued limits refuse; they never hold back
    admit = admission(Limits(max_running=1), people.__getitem__)
    assert admit is not None
    add(service, "d1", RUNNING, owner="mx:@ana")
    mine, theirs = add(service, "d2", QUEUED, owner="tg:1"), add(service, "d3", QUEUED, owner="tg:2")
    running = service.active()
    assert "ana" in (admit(mine, running) or "")  # held back by the same person's job on another platform
    assert admit(theirs, running) is None


def test_the_queries_chat_shows(service: JobService) -> None:
    add(service, "e1", RUNNING, owner="TG:1", metrics={"epoch": 3, "val_acc": 0.91})
    add(service, "e2", QUEUED, owner="tg:2")
    add(service, "e3", STOPPED, owner="slack:u9", sweep="s1")
    with service.transaction():
        service.store.insert_sweep(Sweep(id="s1", kind="mlp", owner="slack:u9", varying=["lr"], monitor="val_acc",
                                         mode="grid", created_at=time.time()))  # fmt: skip
    got = service.get("e1")
    assert got is not None and got.metrics == {"epoch": 3, "val_acc": 0.91}  # a job with its latest figures
    assert service.get("zz") is None
    with pytest.raises(JobError, match="no job zz"):
        service.require("zz")
    assert [j.id for j in service.of_person(["tg:1", "slack:u9"])] == ["e3", "e1"]  # newest first, any case
    assert service.of_person([]) == []
    assert [j.id for j in service.active()] == ["e1"] and [j.id for j in service.queued()] == ["e2"]
    assert {j.id for j in service.jobs({RUNNING, QUEUED})} == {"e1", "e2"}
    assert service.counts() == {(RUNNING, "mlp"): 1, (QUEUED, "mlp"): 1, (STOPPED, "mlp"): 1}
    sweep = service.sweep("s1")
    assert sweep is not None and [j.id for j in service.members("s1")] == ["e3"]
    assert service.claim_sweep_end("s1") and not service.claim_sweep_end("s1")  # one claimant only
    service.ping()


def test_events_since_a_cursor_return_each_event_once(service: JobService) -> None:
    add(service, "f1", RUNNING)
    with service.transaction():
        for i in range(3):
            service.store.add_event("f1", {"type": "progress", "t": float(i), "progress": i / 10})
        service.store.add_event("f1", {"type": "log", "t": 3.0, "line": "hello"})
    first, cursor = service.events_since("f1")
    assert [e["type"] for e in first] == ["progress", "progress", "progress", "log"]
    assert service.events_since("f1", cursor) == ([], cursor)  # nothing new: the cursor stays
    with service.transaction():
        service.store.add_event("f1", {"type": "epoch", "t": 4.0, "epoch": 1})
        service.store.add_event("f1", {"type": "log", "t": 5.0, "line": "bye"})
    new, later = service.events_since("f1", cursor)
    assert [e["type"] for e in new] == ["epoch", "log"] and later > cursor
    curves, _ = service.events_since("f1", cursor, {"epoch", "progress"})
    assert [e["type"] for e in curves] == ["epoch"]
    assert [e["type"] for e in service.progress("f1")] == ["progress"] * 3 + ["epoch"]


class Counted(JobParams):
    """A kind's parameters that count how often they are validated."""

    lr: float = param(0.1, "learning_rate", gt=0, description="step size")
    seen: ClassVar[list[int]] = []

    @model_validator(mode="after")
    def _count(self) -> Counted:
        Counted.seen.append(1)
        return self


async def test_a_train_is_validated_once_and_its_model_travels_to_the_manager(tmp_path: Path) -> None:
    """Chat validates the typed values once (`jobs.params.validate`); the job manager takes that
    model as it is, for the schema, the preflight and the stored parameters alike."""
    registry = KindRegistry()
    registry.register(JobKind("counted", Counted, "jobs.runners.command"), default=True)
    manager = JobManager(JobService.open(tmp_path / "db"), LocalExecutor(), tmp_path / "jobs", registry=registry,
                         max_parallel=0)  # fmt: skip
    Counted.seen.clear()
    checked = validate(Counted, {"lr": "0.5"})
    assert checked.model is not None and len(Counted.seen) == 1
    job = await manager.submit("counted", checked.model, owner="tg:1")
    assert len(Counted.seen) == 1  # not again in the manager (its schema check, its preflight)
    assert job.state == QUEUED and job.params == {"lr": 0.5} == checked.values
    assert manager.service.get(job.id) is not None
    await manager.submit("counted", {"lr": 0.25}, owner="tg:1")  # raw values: validated there, as before
    assert len(Counted.seen) > 1


def test_a_context_is_parsed_once_into_typed_devices() -> None:
    """The validator parses `context`; the GPU queue, quotas and preflight read that same parse."""
    parse_contexts.cache_clear()
    params = MXNetParams(context="gpu:3,5")
    assert params.devices == (Device("gpu", 3), Device("gpu", 5))
    assert gpus_wanted(params.model_dump(mode="json")) == 2 and renumbered(params.context) == "gpu:0,gpu:1"
    assert params.preflight(_NoGpus()) != []  # asks for GPUs this host has none of
    assert parse_contexts.cache_info().misses == 1
    with pytest.raises(ValidationError, match="names a device twice"):
        MXNetParams(context="gpu:0,0")


class _NoGpus:
    datasets_dir = None

    def gpu_count(self) -> int | None:
        return 0


def test_who_may_control_a_job() -> None:
    asked: list[str] = []

    def own(answer: bool) -> Callable[[], bool]:
        def ask() -> bool:
            asked.append("own")
            return answer

        return ask

    assert may_control(admin=True, operator=True, operators_control_all=False, own=own(False))
    assert may_control(admin=False, operator=True, operators_control_all=True, own=own(False))
    assert asked == []  # whose job it is is asked only when it decides
    assert may_control(admin=False, operator=True, operators_control_all=False, own=own(True))
    assert not may_control(admin=False, operator=True, operators_control_all=False, own=own(False))
    assert not may_control(admin=False, operator=False, operators_control_all=True, own=own(True))  # a viewer
