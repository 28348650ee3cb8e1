"""The controller's kopf registrations, as far as its cost per event depends on them."""

from __future__ import annotations

import inspect

import kopf

from kubenova_operator import handlers


def test_no_change_handler_relies_on_the_skipped_diff_base() -> None:
    # The controller tells kopf not to build an object's "essence" on each event (a deep
    # copy per event, for diffs). A change handler (on.create/update/field/delete) added
    # later would get empty diffs: this fails first, naming the storage to go back to.
    registry = kopf.get_default_registry()
    changing = list(registry._changing.get_all_handlers())
    assert changing == [], (
        f"change handlers {changing} need kopf.AnnotationsDiffBaseStorage, not "
        f"{handlers._NoDiffBase.__name__}"
    )


def test_the_skipped_diff_base_builds_nothing() -> None:
    storage = handlers._NoDiffBase(prefix="kubenova.io", key="last-handled-configuration")
    body = kopf.Body({"metadata": {"name": "a"}, "spec": {"flavorRef": "m1"}})
    assert storage.build(body=body) == {}
    assert storage.fetch(body=body) is None


def test_index_and_event_handlers_run_on_the_event_loop() -> None:
    # kopf runs a plain function in its thread pool: a hand-over and a wake-up of the loop
    # for each handler of each event, and the binder kicked from a thread that is not the
    # loop's. A handler added later as a plain ``def`` fails here.
    registry = kopf.get_default_registry()
    registered = [
        *registry._indexing.get_all_handlers(),
        *registry._watching.get_all_handlers(),
    ]
    assert len(registered) >= 15
    plain = [h.id for h in registered if not inspect.iscoroutinefunction(h.fn)]
    assert plain == [], f"handlers {plain} would run in kopf's thread pool; make them async"


def test_kopf_does_not_watch_servers() -> None:
    # Servers are the controller's own watch (kubenova_operator.servers): a kopf handler for
    # them would make kopf watch every Server again, at ~2.5 ms of its loop per event.
    registry = kopf.get_default_registry()
    on_servers = [
        h.id
        for h in (*registry._indexing.get_all_handlers(), *registry._watching.get_all_handlers())
        if h.selector is not None and h.selector.plural == "servers"
    ]
    assert on_servers == []
    assert len(registry._indexing.get_all_handlers()) == len(handlers.INDEXES)
