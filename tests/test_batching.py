"""Dynamic batching: batches form when the model frees, never exceed max_batch, and fail or answer exactly their own.

The batcher is driven by real threads and an inference that blocks on an Event the test releases; the
delay is tested on a clock of the test's own, so nothing here sleeps and hopes. Every wait has a deadline
that only a broken test reaches.
"""

from __future__ import annotations

import logging
import math
import threading
import time

import numpy as np
import pytest
import pytest_twisted
import SimpleITK as sitk
from clients import wait_for
from conftest import assert_same_grid, make_phantom
from twisted.internet import defer

from tomaat import LabelVolume, PlainText, Slider, TomaatApp, Volume
from tomaat.client import AsyncClient
from tomaat.client.errors import ServerError
from tomaat.errors import AppFailure, AppTimeout
from tomaat.server.batching import Batcher, Expired
from tomaat.server.runners import GPU_LOCK, BatchedRunner, LocalRunner, local_runner
from tomaat.server.service import TomaatService
from tomaat.server.timings import Timings, Watch

DEADLINE = 10.0


def until(condition, what: str, timeout: float = DEADLINE) -> None:
    """Wait (on a plain thread) until condition() holds; fail after timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.001)


class Model:
    """run_batch for a Batcher: records each batch's items; a batch holding a held item blocks until released."""

    def __init__(self, hold=(), fail=()):
        self.batches: list[list] = []
        self.hold, self.fail = set(hold), set(fail)
        self.release = threading.Event()
        self.inside = 0
        self.most_inside = 0
        self._lock = threading.Lock()

    def __call__(self, items):
        with self._lock:
            self.batches.append(list(items))
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        try:
            if self.hold & set(items):
                assert self.release.wait(DEADLINE), "the test never released the batch"
            if self.fail & set(items):
                raise RuntimeError("this batch fails")
            return [{"item": item, "double": item * 2} for item in items]
        finally:
            with self._lock:
                self.inside -= 1


class Caller:
    """One request's thread: batcher.run(item), keeping its result or error and its timings."""

    def __init__(self, batcher, item, expired=None):
        self.item, self.result, self.error, self.timings = item, None, None, Timings()
        self.thread = threading.Thread(target=self._run, args=(batcher, expired), daemon=True)
        self.thread.start()

    def _run(self, batcher, expired):
        try:
            self.result = batcher.run(self.item, self.timings, expired)
        except Exception as error:
            self.error = error

    def join(self):
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive(), f"request {self.item} never finished"
        return self


def queue(batcher, items, expired=None) -> list[Caller]:
    """Requests that arrive one after another, each queued before the next: their order is known."""
    callers = []
    for item in items:
        before = batcher.waiting
        callers.append(Caller(batcher, item, expired))
        until(lambda before=before: batcher.waiting == before + 1, f"request {item} to be queued")
    return callers


def running(model, count: int) -> None:
    until(lambda: len(model.batches) >= count, f"{count} batch(es) to start")


class Clock:
    """A clock the test moves; the batcher is woken to look at it."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def move(self, batcher, to: float) -> None:
        self.now = to
        batcher.wake()


def test_a_batch_is_whoever_waits_when_the_model_frees():
    model = Model(hold={0})
    batcher = Batcher(model, max_batch=4)
    first = Caller(batcher, 0)
    running(model, 1)
    later = queue(batcher, [1, 2, 3, 4, 5])  # arrive while batch [0] runs: none of them starts a batch
    assert model.batches == [[0]] and batcher.waiting == 5
    model.release.set()
    for caller in [first, *later]:
        caller.join()
    assert model.batches == [[0], [1, 2, 3, 4], [5]]
    assert model.most_inside == 1  # one batch at a time
    for caller in [first, *later]:  # the i-th result went to the i-th item's request
        assert caller.error is None and caller.result == {"item": caller.item, "double": caller.item * 2}
    assert [caller.timings.batch for caller in later] == [4, 4, 4, 4, 1]
    # one batch, one inference time; queued earlier, waited longer for it
    assert len({caller.timings["inference"] for caller in later[:4]}) == 1
    assert later[0].timings["lock_wait"] > later[3].timings["lock_wait"] > 0


def test_batches_never_exceed_max_batch_and_each_request_gets_its_own_result():
    model = Model()
    batcher = Batcher(model, max_batch=3)
    callers = [Caller(batcher, item) for item in range(40)]
    for caller in callers:
        caller.join()
    assert sorted(item for batch in model.batches for item in batch) == list(range(40))
    assert max(len(batch) for batch in model.batches) <= 3 and model.most_inside == 1
    assert all(caller.result == {"item": caller.item, "double": caller.item * 2} for caller in callers)


def test_a_lone_request_with_no_delay_is_not_delayed():
    model = Model()
    clock = Clock()  # never moves: a batcher that waited for company at all would wait forever
    batcher = Batcher(model, max_batch=4, max_delay_ms=0, clock=clock)
    assert Caller(batcher, 7).join().result == {"item": 7, "double": 14}
    assert model.batches == [[7]]


def test_an_idle_model_waits_for_company_until_max_batch_wait():
    model = Model()
    clock = Clock()  # frozen: only a full batch can end the wait
    batcher = Batcher(model, max_batch=3, max_delay_ms=60_000, clock=clock)
    callers = queue(batcher, [1, 2])
    assert model.batches == []
    callers.append(Caller(batcher, 3))
    for caller in callers:
        caller.join()
    assert model.batches == [[1, 2, 3]]


def test_an_idle_model_waits_at_most_the_delay_from_the_oldest_arrival():
    model = Model()
    clock = Clock()
    batcher = Batcher(model, max_batch=4, max_delay_ms=50, clock=clock)
    [first] = queue(batcher, [1])
    clock.move(batcher, 0.049)  # not yet: had [1] gone alone here, [2] below would make a second batch
    [second] = queue(batcher, [2])
    clock.move(batcher, 0.050)  # the oldest has waited max_delay_ms: the two go, without a full batch
    first.join(), second.join()
    assert model.batches == [[1, 2]]


def test_time_waited_for_a_busy_model_counts_towards_the_delay():
    model = Model(hold={0})
    clock = Clock()
    batcher = Batcher(model, max_batch=4, max_delay_ms=1000, clock=clock)
    [first] = queue(batcher, [0])
    clock.move(batcher, 1.0)
    running(model, 1)  # [0] waited its second and runs
    [second] = queue(batcher, [1])  # arrives at 1.0 while the model is busy
    clock.now = 2.5  # it has waited 1.5 s when the model frees: it goes at once, alone
    model.release.set()
    first.join(), second.join()
    assert model.batches == [[0], [1]]


def test_a_real_delay_holds_a_lone_request_for_about_max_delay_ms():
    model = Model()
    batcher = Batcher(model, max_batch=4, max_delay_ms=50)
    caller = Caller(batcher, 1).join()
    assert caller.result == {"item": 1, "double": 2}
    assert 0.049 <= caller.timings["lock_wait"] < 5.0  # the two clocks may differ by microseconds


def test_a_failing_batch_fails_only_its_culprit_and_the_next_batch_runs():
    """One client's request that makes the model raise (a volume of another shape, values it chokes on) must
    not fail the requests of other clients batched with it: they are run again alone and answered."""
    model = Model(hold={0}, fail={13})
    batcher = Batcher(model, max_batch=2)
    first = Caller(batcher, 0)
    running(model, 1)
    failing = queue(batcher, [13, 1])
    fine = queue(batcher, [2, 3])
    model.release.set()
    for caller in [first, *failing, *fine]:
        caller.join()
    assert model.batches == [[0], [13, 1], [13], [1], [2, 3]]  # the failed batch, then each of its requests alone
    assert first.result == {"item": 0, "double": 0}
    culprit, innocent = failing
    assert isinstance(culprit.error, RuntimeError) and culprit.result is None
    assert innocent.error is None and innocent.result == {"item": 1, "double": 2}
    assert [caller.result for caller in fine] == [{"item": 2, "double": 4}, {"item": 3, "double": 6}]


def test_every_request_of_a_batch_that_fails_alone_too_gets_its_own_error():
    model = Model(hold={0}, fail={13, 14})
    batcher = Batcher(model, max_batch=2)
    first = Caller(batcher, 0)
    running(model, 1)
    failing = queue(batcher, [13, 14])
    model.release.set()
    for caller in [first, *failing]:
        caller.join()
    assert model.batches == [[0], [13, 14], [13], [14]]
    assert all(isinstance(caller.error, RuntimeError) for caller in failing)
    assert failing[0].error is not failing[1].error  # each request raises its own copy


def test_what_a_failed_batch_wrote_into_its_items_is_not_seen_when_they_run_again():
    seen = []

    def model(items):
        seen.append([dict(item) for item in items])
        for item in items:
            item["touched"] = True  # an app writing its outputs into data before it fails
        if len(items) > 1:
            raise RuntimeError("this batch fails")
        return items

    gpu = threading.Lock()
    batcher = Batcher(model, max_batch=2, lock=gpu)
    with gpu:
        callers = queue(batcher, [{"n": 1}, {"n": 2}])
    for caller in callers:
        caller.join()
    assert seen == [[{"n": 1}, {"n": 2}], [{"n": 1}], [{"n": 2}]]  # each retry starts from the request's own data
    assert [caller.result for caller in callers] == [{"n": 1, "touched": True}, {"n": 2, "touched": True}]


def test_a_result_list_of_the_wrong_length_runs_each_request_again_alone():
    calls = []

    def short(items):
        calls.append(items)
        return [{"only": "one"}] if len(calls) == 1 else [{"item": item} for item in items]

    gpu = threading.Lock()
    batcher = Batcher(short, max_batch=2, lock=gpu)
    with gpu:  # another service holds the GPU: both wait, and go together when it frees
        callers = queue(batcher, [1, 2])
    for caller in callers:
        caller.join()
    assert calls == [[1, 2], [1], [2]]
    assert [caller.result for caller in callers] == [{"item": 1}, {"item": 2}]
    assert Caller(batcher, 3).join().result == {"item": 3}


def test_a_request_that_expired_while_queued_is_left_out_of_the_batch():
    model = Model(hold={0})
    batcher = Batcher(model, max_batch=4)
    first = Caller(batcher, 0)
    running(model, 1)
    gone = {"expired": False}
    [late] = queue(batcher, [1], expired=lambda: gone["expired"])
    [on_time] = queue(batcher, [2], expired=lambda: False)
    gone["expired"] = True
    model.release.set()
    for caller in (first, late, on_time):
        caller.join()
    assert model.batches == [[0], [2]]
    assert isinstance(late.error, Expired) and on_time.result == {"item": 2, "double": 4}


def test_the_dispatcher_thread_goes_when_no_request_waits():
    batcher = Batcher(Model(), max_batch=2, name="tomaat-batcher-test-idle")
    Caller(batcher, 1).join()
    until(
        lambda: not any(t.name == "tomaat-batcher-test-idle" for t in threading.enumerate()),
        "the idle dispatcher thread to end",
    )
    assert Caller(batcher, 2).join().result == {"item": 2, "double": 4}  # and a new one comes for the next


# The batcher inside the server's steps: the app's API, its errors, the unbatched path left as it was.


class Doubler(TomaatApp):
    max_batch = 4
    input_interface = [Volume("images")]

    def __init__(self, outcome=None):
        super().__init__()
        self.outcome = outcome
        self.batches = []

    def inference(self, data):
        raise AssertionError("a batched app's inference goes through inference_batch")

    def inference_batch(self, items):
        self.batches.append(len(items))
        assert GPU_LOCK.locked()
        if self.outcome == "raises":
            raise RuntimeError("secret detail /srv/models/weights.h5")
        if self.outcome == "short":
            return items[:-1]
        if self.outcome == "not a dict":
            return [[item] for item in items]
        for item in items:
            item["doubled"] = item["value"] * 2
        return None if self.outcome == "in place" else items


def run_steps(steps, value):
    return steps.inference({"value": value}, Timings(), Watch())


def test_batched_steps_run_the_apps_inference_batch_under_the_gpu_lock():
    for outcome in (None, "in place"):
        app = Doubler(outcome)
        steps = local_runner(app)
        assert isinstance(steps, BatchedRunner) and steps.batcher.lock is GPU_LOCK
        assert run_steps(steps, 21) == {"value": 21, "doubled": 42}
        assert app.batches == [1]
    assert steps.describe() == {"engine": "local", "max_batch": 4, "max_delay_ms": 0.0}


@pytest.mark.parametrize(
    "outcome, message, logged",
    [
        ("raises", "the service failed during inference; the error is in the server log", "Error: secret detail"),
        ("short", "the service failed during inference; the error is in the server log", "returned 0 results"),
        ("not a dict", "the service failed during inference: it did not return the data dict", "a list instead"),
    ],
)
def test_a_failing_inference_batch_is_the_unbatched_paths_app_failure(caplog, outcome, message, logged):
    steps = local_runner(Doubler(outcome))
    with caplog.at_level(logging.INFO, logger="tomaat.server"):
        with pytest.raises(AppFailure) as failure:
            run_steps(steps, 1)
    assert failure.value.message == message and failure.value.status == 500
    assert "secret" not in failure.value.message
    assert caplog.text.count(logged) == 1
    assert not GPU_LOCK.locked()


def test_an_expired_request_is_told_it_ran_past_its_time_limit():
    steps = local_runner(Doubler())
    watch = Watch()
    watch.expired = True
    with pytest.raises(AppTimeout, match="ran past its time limit"):
        steps.inference({"value": 1}, Timings(), watch)
    assert steps.app.batches == []


def test_without_max_batch_the_steps_are_the_unbatched_ones():
    class Plain(TomaatApp):
        def inference(self, data):
            assert GPU_LOCK.locked()
            data["seen"] = True
            return data

        def inference_batch(self, items):
            raise AssertionError("never called for max_batch = 1")

    steps = local_runner(Plain())
    assert type(steps) is LocalRunner
    timings = Timings()
    assert steps.inference({}, timings) == {"seen": True}
    assert set(timings) == {"lock_wait", "inference"} and timings.batch == 0
    assert "batch=" not in timings.summary()


def test_the_default_inference_batch_runs_inference_item_by_item():
    def inference(data):
        return {"out": data["in"] + 1}

    app = TomaatApp(inference_fun=inference)  # an upstream-style function app
    assert app.run_inference_batch([{"in": 1}, {"in": 2}]) == [{"out": 2}, {"out": 3}]


@pytest.mark.parametrize(
    "max_batch, max_delay_ms, message",
    [
        (0, 0.0, "max_batch is 0; expected a whole number of at least 1"),
        ("4", 0.0, "max_batch is '4'"),
        (True, 0.0, "max_batch is True"),
        (2.5, 0.0, "max_batch is 2.5"),
        (4, -1, "max_delay_ms is -1; expected a finite number of milliseconds, at least 0"),
        (4, math.nan, "max_delay_ms is nan"),
        (4, math.inf, "max_delay_ms is inf"),
        (4, "5", "max_delay_ms is '5'"),
    ],
)
def test_batch_settings_are_checked_when_the_service_is_built(max_batch, max_delay_ms, message):
    app = Doubler()
    app.max_batch, app.max_delay_ms = max_batch, max_delay_ms
    with pytest.raises(ValueError) as refused:
        TomaatService(app=app, tls=False, port=0)
    assert message in str(refused.value)


@pytest_twisted.ensureDeferred
async def test_a_max_batch_above_the_threads_is_warned_about_at_start(serve, caplog):
    with caplog.at_level(logging.WARNING, logger="tomaat.server"):
        await serve(Doubler(), threads=2)
    assert "max_batch is 4 but the service has 2 worker threads" in caplog.text


# End to end: concurrent requests over real HTTP share batches and each gets its own labels on its own grid.


class BatchedThreshold(TomaatApp):
    """A threshold per request, run as one batch; the first batch waits until the test lets it go."""

    max_batch = 4
    input_interface = [Volume("images"), Slider("threshold", 0, 1000)]
    output_interface = [LabelVolume("labels", "Mask"), PlainText("summary", "Summary")]

    def __init__(self):
        super().__init__()
        self.sizes = []
        self.release = threading.Event()

    def preprocess(self, data):
        data["array"] = sitk.GetArrayFromImage(data["images"])
        return data

    def inference_batch(self, items):
        self.sizes.append(len(items))
        assert GPU_LOCK.locked()
        if len(self.sizes) == 1:
            assert self.release.wait(DEADLINE), "the test never released the first batch"
        for item in items:
            item["mask"] = (item["array"] >= item["threshold"]).astype(np.uint8)
        return items

    def postprocess(self, data):
        labels = sitk.GetImageFromArray(data["mask"])
        labels.CopyInformation(data["images"])
        data["labels"] = labels
        data["summary"] = f"{int(data['mask'].sum())} voxels at or above {data['threshold']:g}"
        return data


@pytest_twisted.ensureDeferred
async def test_concurrent_requests_over_http_are_batched_and_each_gets_its_own_labels(serve, tmp_path, caplog):
    app = BatchedThreshold()
    service = await serve(app, threads=8)
    batcher = service.runner.batcher
    client = AsyncClient(service.url, known_hosts=str(tmp_path / "kh.json"))
    sizes = [(14, 12, 10), (13, 12, 10), (14, 11, 10), (14, 12, 9), (12, 12, 10)]
    thresholds = [100, 600, 100, 600, 950]
    phantoms = [make_phantom(size) for size in sizes]
    assert phantoms[0].GetDirection() != (1, 0, 0, 0, 1, 0, 0, 0, 1) and phantoms[0].GetOrigin() != (0, 0, 0)
    with caplog.at_level(logging.INFO, logger="tomaat.server"):
        answers = defer.gatherResults(
            [
                defer.Deferred.fromCoroutine(client.predict({"images": image, "threshold": threshold}))
                for image, threshold in zip(phantoms, thresholds, strict=True)
            ],
            consumeErrors=True,
        )
        # the first batch holds the model until every other request waits for the next one
        await wait_for(lambda: app.sizes and app.sizes[0] + batcher.waiting == 5, what="the other requests queued")
        app.release.set()
        results = await answers
    assert sum(app.sizes) == 5 and max(app.sizes) > 1 and max(app.sizes) <= 4
    for image, threshold, result in zip(phantoms, thresholds, results, strict=True):
        labels = result["labels"]
        assert_same_grid(labels, image)
        expected = (sitk.GetArrayFromImage(image) >= threshold).astype(np.uint8)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(labels), expected)
        assert result["summary"] == f"{int(expected.sum())} voxels at or above {threshold}"
    assert "batch=" in caplog.text
    assert service.info()["steps"] == {"engine": "local", "max_batch": 4, "max_delay_ms": 0.0}
    metrics = service.metrics.render().decode()
    assert f"tomaat_batch_size_count {float(len(app.sizes))}" in metrics
    assert "tomaat_batch_size_sum 5.0" in metrics


class StackingThreshold(BatchedThreshold):
    """Stacks its batch into one array as a model does (volumes of another shape cannot go in together), and
    chokes on a threshold of 666, standing for values that make a model raise."""

    def inference_batch(self, items):
        self.sizes.append(len(items))
        self.batches.append(sorted(item["threshold"] for item in items))
        if len(self.sizes) == 1:
            assert self.release.wait(DEADLINE), "the test never released the first batch"
        stacked = np.stack([item["array"] for item in items])  # ValueError for volumes of different shapes
        if any(item["threshold"] == 666 for item in items):
            raise FloatingPointError("the model diverged on these values")
        for item, array in zip(items, stacked, strict=True):
            item["mask"] = (array >= item["threshold"]).astype(np.uint8)
        return items


@pytest_twisted.ensureDeferred
async def test_one_clients_request_fails_only_itself_not_the_requests_batched_with_it(serve, tmp_path):
    """Three good requests, one of another shape and one poisoned, queued into one batch of four: the
    poisoned one fails (500) and every other gets its own labels, the one of another shape included."""
    app = StackingThreshold()
    app.batches = []
    service = await serve(app, threads=8)
    batcher = service.runner.batcher
    client = AsyncClient(service.url, known_hosts=str(tmp_path / "kh.json"))
    cases = [((14, 12, 10), 100), ((14, 12, 10), 600), ((14, 12, 10), 666), ((14, 12, 10), 950), ((13, 11, 9), 100)]

    async def one(size, threshold):
        try:
            return await client.predict({"images": make_phantom(size), "threshold": threshold})
        except ServerError as error:
            return error

    # the first holds the model alone; the other four, the poisoned one among them, queue for the next batch
    first = defer.Deferred.fromCoroutine(one(*cases[0]))
    await wait_for(lambda: app.sizes == [1], what="the first request's batch to start")
    others = [defer.Deferred.fromCoroutine(one(*case)) for case in cases[1:]]
    answers = defer.gatherResults([first, *others], consumeErrors=True)
    await wait_for(lambda: batcher.waiting == 4, what="the other four requests queued")
    app.release.set()
    results = await answers
    # the four went in together and failed; each then ran alone, and only the poisoned one failed again
    assert app.batches[:2] == [[100], [100, 600, 666, 950]] and sorted(app.batches[2:]) == [[100], [600], [666], [950]]
    for (size, threshold), result in zip(cases, results, strict=True):
        if threshold == 666:
            assert isinstance(result, ServerError) and result.status == 500
            continue
        image = make_phantom(size)
        expected = (sitk.GetArrayFromImage(image) >= threshold).astype(np.uint8)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(result["labels"]), expected)
        assert_same_grid(result["labels"], image)
