"""The demo plan's student label rule: the plan's own, else the teachers' calibrated one."""
import dataclasses
import json

from mmdistill_training.pipeline import PLANS, student_label_rule


def test_label_rule_plan_then_fusion_json_then_default(tmp_path):
    plan = dataclasses.replace(PLANS['full'], min_label_score=None, label_support=None)
    assert student_label_rule(plan, tmp_path) == (None, None)              # no fusion.json: the train defaults
    (tmp_path / 'fusion.json').write_text(json.dumps({'calibration': {'default': True}}))
    assert student_label_rule(plan, tmp_path) == (None, None)
    (tmp_path / 'fusion.json').write_text(json.dumps({'calibration': {'min_label_score': 0.55,
                                                                      'label_support': ['thermal']}}))
    assert student_label_rule(plan, tmp_path) == (0.55, ['thermal'])
    assert student_label_rule(dataclasses.replace(plan, min_label_score=0.3, label_support=()), tmp_path) == (0.3, [])
