"""The demo plan's label threshold: the plan's own, else the teachers' calibrated one."""
import dataclasses
import json

from mmdistill_training.pipeline import PLANS, label_threshold


def test_label_threshold_plan_then_fusion_json_then_default(tmp_path):
    plan = dataclasses.replace(PLANS['full'], min_label_score=None)
    assert label_threshold(plan, tmp_path) is None                       # no fusion.json: the train default
    (tmp_path / 'fusion.json').write_text(json.dumps({'calibration': {'default': True}}))
    assert label_threshold(plan, tmp_path) is None
    (tmp_path / 'fusion.json').write_text(json.dumps({'calibration': {'min_label_score': 0.55}}))
    assert label_threshold(plan, tmp_path) == 0.55
    assert label_threshold(dataclasses.replace(plan, min_label_score=0.3), tmp_path) == 0.3
