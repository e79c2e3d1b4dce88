"""The gateway's one worker: closes quiet series, predicts, builds the results, sends them, cleans up.

One batch is worked on at a time, each step ending in a journal written to disk (spool.py), so a
gateway killed anywhere resumes from the last step it finished: a series received but not predicted
is predicted again (nothing of it was sent), results built are sent as they are (the same SOP Instance
UIDs), results acknowledged are not sent again. A step that fails is tried again after a delay that
doubles (retry in the configuration), and after the last try the batch is `failed`, logged as an
error and counted in the metrics; its instances are deleted, its journal kept for `gateway status`
(and, with `retention`, deleted that long after, as a held batch is).
Input that can never work (a series that is not one volume, a request the service refuses) fails at once.

Each result goes to each destination its rule names for its kind (a "delivery"); the journal records
each delivery acknowledged, so one destination that is down delays only what goes to it.
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
from .config import Config, Node, Rule, Stow
from .sender import SendFailed, send, store
from .spool import TERMINAL, Spool

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
            if journal["state"] in TERMINAL:
                self._expire(batch, journal, now)
                continue
            if journal.get("next_try", 0) > now:
                continue
            if journal["state"] == "received":
                self._predict(batch, journal)
                return True
            if journal["state"] == "built":
                self._send(batch, journal)
                return True
        return False

    def _expire(self, batch: str, journal: dict, now: float) -> None:
        """Delete a failed or held batch, journal and all, once it was kept for the configured retention."""
        retention = self.config.retention
        since = journal.get(journal["state"], journal.get("created", now))  # the time it failed / was held
        if retention is None or now - since < retention:
            return
        self.spool.remove(batch)
        log.warning(
            "series %s: %s %.0f s ago, deleted from the spool (retention %g s)",
            journal["series_uid"],
            journal["state"],
            now - since,
            retention,
        )
        if self.metrics:
            self.metrics.expired.inc()

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
                journal.update(state="held", held=time.time())
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
        sender = self._sender(journal)
        if sender is None and any("sender" in to for to in rule.send_to.values()):
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
        names, deliveries = [], []
        for index, (kind, data) in enumerate(built):
            name = f"{index:02d}-{kind}.dcm"
            self.spool.add_result(batch, name, data)
            names.append(name)
            for to in rule.send_to[kind]:
                node = sender if to == "sender" else self.config.destinations[to]
                delivery: dict[str, Any] = {"result": name, "to": to}
                if isinstance(node, Node):  # the node as it is now: a C-STORE destination's address is kept
                    delivery["node"] = {"ae_title": node.ae_title, "host": node.host, "port": node.port}
                deliveries.append(delivery)
        journal.update(state="built", rule=rule.name, results=names, deliveries=deliveries, sent=[], attempts=0,
                       next_try=0)  # fmt: skip
        journal.pop("error", None)
        self.spool.save(batch, journal)
        if not names:
            log.info("series %s: no results to send", journal["series_uid"])

    def _sender(self, journal: dict) -> Node | None:
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
        deliveries = _deliveries(journal)
        unsent: dict[str, list[dict]] = {}  # destination -> its deliveries not yet acknowledged, in order
        for delivery in deliveries:
            if _key(delivery) not in journal["sent"]:
                unsent.setdefault(delivery["to"], []).append(delivery)
        problems = []
        for to, items in unsent.items():  # none left when the gateway was stopped before the clean-up
            try:
                self._deliver(batch, journal, to, items)
            except SendFailed as problem:
                problems.append(str(problem))
            except Exception as problem:  # noqa: BLE001 - a socket, TLS or file error: tried again, then failed visibly
                problems.append(
                    f"sending to {_where(self.config, items[0])}: {type(problem).__name__}: {str(problem)[:200]}"
                )
        if problems:
            self._again(batch, journal, "; ".join(problems))
            return
        self.spool.remove(batch)
        log.info(
            "series %s: %d result(s) sent to %s; spool cleaned",
            journal["series_uid"],
            len(journal["results"]),
            ", ".join(dict.fromkeys(_where(self.config, d) for d in deliveries)) or "nowhere",
        )
        if self.metrics:
            self.metrics.sent.inc()

    def _deliver(self, batch: str, journal: dict, to: str, items: list[dict]) -> None:
        """Send one destination's results; each acknowledged one is journalled at once."""
        by_path = {self.spool.path(batch, "results", d["result"]): d for d in items}

        def done(path: str) -> None:
            journal["sent"].append(_key(by_path[path]))
            self.spool.save(batch, journal)

        if "node" in items[0]:
            send(self.config.ae_title, Node(**items[0]["node"]), list(by_path), done, self.ssl_context)
            return
        destination = self.config.destinations.get(to)
        if not isinstance(destination, Stow):
            raise SendFailed(f"destinations.{to}: no longer a STOW-RS destination in the configuration")
        kinds = [d["result"].split("-", 1)[1].removesuffix(".dcm").upper() for d in items]
        store(to, destination, journal["study_uid"], list(by_path), f"the results ({', '.join(kinds)})")
        for path in by_path:
            done(path)


def _deliveries(journal: dict) -> list[dict]:
    """The batch's deliveries; a journal from before rules could route outputs apart sent all to one node."""
    if "deliveries" in journal:
        return journal["deliveries"]
    return [{"result": name, "to": "", "node": journal["destination"]} for name in journal["results"]]


def _key(delivery: dict) -> str:
    """How `sent` records a delivery (a journal from before rules could route outputs apart: its file name)."""
    return f"{delivery['result']} to {delivery['to']}" if delivery["to"] else delivery["result"]


def _where(config: Config, delivery: dict) -> str:
    if "node" in delivery:
        node = delivery["node"]
        return f"{node['ae_title']} at {node['host']}:{node['port']}"
    destination = config.destinations.get(delivery["to"])
    return destination.url if isinstance(destination, Stow) else f"destinations.{delivery['to']}"
