"""The gateway's one worker: closes quiet series, predicts, builds the results, sends them, cleans up.

One batch is worked on at a time, each step ending in a journal written to disk (spool.py), so a
gateway killed anywhere resumes from the last step it finished: a series received but not predicted
is predicted again (nothing of it was sent), results built are sent as they are (the same SOP Instance
UIDs), results acknowledged are not sent again. A step that fails is tried again after a delay that
doubles (retry in the configuration), and after the last try the batch is `failed`, logged as an
error and counted in the metrics; its instances are deleted, its journal kept for `gateway status`.
Input that can never work (a series that is not one volume, a request the service refuses) fails at once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from ..client.errors import ValidationError
from ..dicom.errors import DicomError
from . import rules
from .config import Config, Node, Rule
from .sender import SendFailed, send
from .spool import Spool

log = logging.getLogger("tomaat.gateway")


class Worker:
    def __init__(self, config: Config, spool: Spool, metrics=None, ssl_context=None):
        self.config, self.spool, self.metrics, self.ssl_context = config, spool, metrics, ssl_context
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tomaat-gateway-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.step()
            except Exception:  # noqa: BLE001 - the worker must outlive any one batch's surprise
                log.exception("the gateway's worker failed a step; it goes on")
                busy = False
            if not busy:
                self._stop.wait(0.2)

    def step(self) -> bool:
        """Do one thing that is due; whether there was one."""
        for batch in self.spool.quiet(self.config.quiet_seconds):
            journal = self.spool.close(batch)
            log.info(
                "series %s from %s complete: %d instances (batch %s)",
                journal["series_uid"],
                journal["calling_ae"],
                len(self.spool.instances(batch)),
                batch,
            )
            if self.metrics:
                self.metrics.received.inc()
        now = time.time()
        for batch in self.spool.batches():
            journal = self.spool.journal(batch)
            if journal.get("next_try", 0) > now:
                continue
            if journal["state"] == "received":
                self._predict(batch, journal)
                return True
            if journal["state"] == "built":
                self._send(batch, journal)
                return True
        return False

    def _failed(self, batch: str, journal: dict, reason: str) -> None:
        journal.update(state="failed", error=reason, failed=time.time())
        self.spool.save(batch, journal)
        self.spool.drop_instances(batch)
        log.error("FAILED series %s (batch %s): %s", journal["series_uid"], batch, reason)
        if self.metrics:
            self.metrics.failed.inc()

    def _again(self, batch: str, journal: dict, reason: str) -> None:
        """Try this step again later, or give up after the configured attempts."""
        journal["attempts"] = attempts = journal.get("attempts", 0) + 1
        retry = self.config.retry
        if attempts >= retry.attempts:
            self._failed(batch, journal, f"gave up after {attempts} attempts: {reason}")
            return
        delay = retry.delay(attempts)
        journal.update(next_try=time.time() + delay, error=reason)
        self.spool.save(batch, journal)
        log.warning(
            "series %s (batch %s): %s; trying again in %g s (attempt %d of %d)",
            journal["series_uid"],
            batch,
            reason,
            delay,
            attempts + 1,
            retry.attempts,
        )

    def _predict(self, batch: str, journal: dict) -> None:
        rule = rules.route(self.config.rules, journal)
        if rule is None:
            if self.config.unmatched == "hold":
                journal["state"] = "held"
                self.spool.save(batch, journal)
                log.warning(
                    "series %s from %s matched no rule: held in the spool (batch %s)",
                    journal["series_uid"],
                    journal["calling_ae"],
                    batch,
                )
            else:
                self.spool.remove(batch)
                log.warning("series %s from %s matched no rule: dropped", journal["series_uid"], journal["calling_ae"])
            if self.metrics:
                self.metrics.unmatched.inc()
            return
        destination = self._destination(rule, journal)
        if destination is None:
            self._failed(
                batch,
                journal,
                f"rule '{rule.name}' sends results to the sender, but callers.{journal['calling_ae']} has no port",
            )
            return
        log.info("series %s: rule '%s', to %s", journal["series_uid"], rule.name, rule.server)
        try:
            built = self._build(batch, rule)
        except (DicomError, ValidationError) as problem:
            self._failed(batch, journal, str(problem))
            return
        except Exception as problem:  # noqa: BLE001 - a server down or slow: worth another try
            self._again(batch, journal, f"{type(problem).__name__}: {str(problem)[:300]}")
            return
        names = []
        for index, (kind, data) in enumerate(built):
            name = f"{index:02d}-{kind}.dcm"
            self.spool.add_result(batch, name, data)
            names.append(name)
        journal.update(state="built", rule=rule.name, results=names, sent=[], attempts=0, next_try=0,
                       destination={"ae_title": destination.ae_title, "host": destination.host, "port": destination.port})  # fmt: skip
        journal.pop("error", None)
        self.spool.save(batch, journal)
        if not names:
            log.info("series %s: no results to send", journal["series_uid"])

    def _destination(self, rule: Rule, journal: dict) -> Node | None:
        if rule.send_to != "sender":
            return self.config.destinations[rule.send_to]
        caller = self.config.callers.get(journal["calling_ae"])
        return caller if caller is not None and caller.port else None

    def _build(self, batch: str, rule: Rule) -> list[tuple[str, bytes]]:
        from ..client.blocking import Client
        from ..dicom import loop
        from ..dicom.series import read_series
        from . import results

        paths = self.spool.instances(batch)
        files = []
        for path in paths:
            with open(path, "rb") as handle:
                files.append(handle.read())
        series = read_series(files, names=[os.path.basename(p) for p in paths])
        client = Client(rule.server, timeout=30.0, result_timeout=3600.0, reuse=False, fingerprint=rule.fingerprint)
        info = client.info()
        target = loop.volume_destination(info, rule.settings)
        inputs: dict[str, Any] = {target: series.image, **rule.settings}
        result = client.predict(**inputs)
        built: list[tuple[str, bytes]] = []
        if "seg" in rule.outputs:
            built += [
                ("seg", seg) for _, _, seg in loop.segs_for(result, info, series, lambda text: log.info("%s", text))
            ]
        extra = [kind for kind in rule.outputs if kind != "seg"]
        if extra:
            built += results.build(extra, result, info, series)
        return built

    def _send(self, batch: str, journal: dict) -> None:
        node = Node(**journal["destination"])
        unsent = [name for name in journal["results"] if name not in journal["sent"]]

        def done(path: str) -> None:
            journal["sent"].append(os.path.basename(path))
            self.spool.save(batch, journal)

        try:
            if unsent:  # none left when the gateway was stopped between the last acknowledgement and the clean-up
                send(
                    self.config.ae_title,
                    node,
                    [self.spool.path(batch, "results", n) for n in unsent],
                    done,
                    self.ssl_context,
                )
        except SendFailed as problem:
            self._again(batch, journal, str(problem))
            return
        except Exception as problem:  # noqa: BLE001 - a socket, TLS or file error: tried again, then failed visibly
            self._again(
                batch,
                journal,
                f"sending to {node.ae_title} at {node.host}:{node.port}: {type(problem).__name__}: {str(problem)[:200]}",
            )
            return
        self.spool.remove(batch)
        log.info(
            "series %s: %d result(s) sent to %s at %s:%d; spool cleaned",
            journal["series_uid"],
            len(journal["results"]),
            node.ae_title,
            node.host,
            node.port,
        )
        if self.metrics:
            self.metrics.sent.inc()
