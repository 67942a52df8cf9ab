"""The model slot is the one way a model goes in use: from the learner's trainer, a
retraining or a reload, the pipeline takes it, learning ends and it is said."""

from __future__ import annotations

import json
import shutil

from sysdream.daemon import config
from sysdream.daemon.service.loop import Service


def test_each_way_in_goes_through_the_slot(tmp_path, tiny_bundle, tiny_detector):
    state = tmp_path / "state"
    state.mkdir()
    shutil.copytree(tiny_bundle, state / "model")
    events = tmp_path / "events.jsonl"
    cfg = config.override(config.load(None), {("service", "state_directory"): str(state),
                                              ("alerts", "journald"): False,
                                              ("alerts", "json_lines"): str(events)})
    svc = Service(cfg)
    try:
        # not started: no probes attached, so the service says starting whatever its
        # learner is at
        assert svc.phase == "starting"
        assert svc.learner.phase == "learning" and svc.model is None
        svc.slot.learnt()           # the learner's trainer left this bundle
        assert svc.learner.phase == "detecting"
        assert svc.model.model_id == tiny_detector.model_id
        assert svc.scorer.model is svc.model and svc.cutter.model is svc.model
        assert svc.slot.reloads == {}
        first = svc.model
        svc.slot.retrained()        # a retraining installed one: in use like a reload's
        assert svc.model is not first and svc.scorer.model is svc.model
        assert svc.slot.reloads == {"ok": 1}
        shutil.rmtree(state / "model")
        svc.slot.reload()           # SIGHUP with no bundle there: nothing to load
        svc.slot.retrained()        # refused: counted and said, the model in use stays
        assert svc.slot.reloads == {"ok": 1, "failed": 1} and svc.scorer.model is svc.model
        kinds = [json.loads(ln)["kind"] for ln in events.read_text().splitlines()]
        assert kinds == ["learning-complete", "model-loaded", "model-rejected"]
    finally:
        if svc.scorer is not None:
            svc.scorer.stop()
        svc.close()
