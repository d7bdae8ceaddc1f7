"""Scenario schema: every named scenario loads; bad files fail with one clear error naming the key."""
import dataclasses

import pytest
import yaml

from mmdistill_common.errors import ConfigError
from mmdistill_sim.scenario import (Camera, Scenario, list_scenarios, load_scenario, scenario_from_dict,
                                    scenario_to_dict, schema_markdown)

REQUIRED = {'day-static', 'night-static', 'day-driving', 'night-driving', 'occluded-crossing', 'dense-traffic',
            'fog', 'highway', 'town-day-static', 'town-dusk-static', 'town-night-static', 'town-fog-static',
            'town-day-driving', 'town-dusk-driving', 'town-night-driving', 'town-rain-driving'}


def test_library_has_required_scenarios():
    assert REQUIRED <= set(list_scenarios())


@pytest.mark.parametrize('name', list_scenarios())
def test_named_scenario_loads(name):
    sc = load_scenario(name)
    assert sc.name == name
    assert sc.duration_s > 0 and sc.frame_rate == 10.0
    # every named scenario uses the default camera (the student's geometry is shared across drives)
    assert (sc.camera.width, sc.camera.height, sc.camera.fx) == (Camera().width, Camera().height, Camera().fx)
    assert sc.mic_array.positions().shape == (8, 3)
    assert sc.audio.sample_rate == 44100
    assert 20 <= sc.audio.chunk_ms <= 50


def test_defaults_and_seed_override():
    sc = load_scenario('day-static', seed=123)
    assert sc.seed == 123
    d = scenario_from_dict({})
    assert d == Scenario(camera=d.camera)  # cx/cy filled in
    assert d.camera.cx == d.camera.width / 2 and d.camera.cy == d.camera.height / 2


def test_round_trip():
    sc = load_scenario('occluded-crossing')
    again = scenario_from_dict(scenario_to_dict(sc))
    assert dataclasses.asdict(again) == dataclasses.asdict(sc)


def test_file_path(tmp_path):
    p = tmp_path / 'mine.yaml'
    p.write_text(yaml.safe_dump({'duration_s': 3.0, 'time_of_day': 'night'}))
    sc = load_scenario(p)
    assert sc.name == 'mine' and sc.duration_s == 3.0


@pytest.mark.parametrize('data, fragment', [
    ({'traffic': {'vehicle_per_minute': 3}}, 'traffic.vehicle_per_minute: unknown key'),
    ({'road': {'lanes': [{'direction': 'along', 'ofset_m': 2}]}}, 'road.lanes[0].ofset_m: unknown key'),
    ({'duration_s': 'long'}, 'duration_s: expected a number'),
    ({'duration_s': 0}, 'duration_s: 0.0 is out of range'),
    ({'frame_rate': -1}, 'frame_rate'),
    ({'time_of_day': 'noon'}, "time_of_day: 'noon' is not one of day, dusk, night"),
    ({'camera': {'width': 384.5}}, 'camera.width: expected an integer'),
    ({'audio': {'air_absorption': 'yes'}}, 'audio.air_absorption: expected true/false'),
    ({'traffic': {'speed_min_mps': 20, 'speed_max_mps': 10}}, 'speed_min_mps: 20.0 is above speed_max_mps'),
    ({'ego': {'mode': 'driving'}}, 'ego.speed_mps: must be > 0 when mode is driving'),
    ({'traffic': {'class_mix': {'car': 0, 'truck': 0, 'motorbike': 0}}}, 'traffic.class_mix'),
    ({'occluders': [{'size_m': [1, 2]}]}, 'occluders[0].size_m'),
    ({'mic_array': {'positions_m': [[0, 0, 1], [0, 1]]}}, 'mic_array.positions_m'),
    ({'traffic': {'scripted': [{'lane': 5}]}}, 'traffic.scripted[0].lane'),
    ({'road': 'wide'}, 'road: expected a mapping'),
    ({'duration_s': float('nan')}, 'duration_s: must be finite'),
])
def test_validation_errors(data, fragment):
    with pytest.raises(ConfigError) as exc:
        scenario_from_dict(data)
    assert fragment in str(exc.value)


def test_unknown_name_lists_library():
    with pytest.raises(ConfigError, match='day-static'):
        load_scenario('no-such-scenario')


def test_bad_yaml_file(tmp_path):
    p = tmp_path / 'bad.yaml'
    p.write_text('traffic: {vehicles_per_minute: [\n')
    with pytest.raises(ConfigError, match='bad.yaml'):
        load_scenario(p)
    p.write_text('ego: {mode: flying}\n')
    with pytest.raises(ConfigError, match=r'bad.yaml: ego.mode'):
        load_scenario(p)


def test_explicit_mic_positions():
    sc = scenario_from_dict({'mic_array': {'positions_m': [[0, 0.1, 1.5], [0, -0.1, 1.5]]}})
    assert sc.mic_array.n_mics == 2 and sc.mic_array.positions().shape == (2, 3)


def test_schema_markdown_covers_every_field():
    md = schema_markdown()
    assert md.startswith('| field | type | unit | default | meaning |')
    for name in ['seed', 'duration_s', 'frame_rate', 'ego.mode', 'ego.speed_mps', 'road.lanes[].direction',
                 'road.lanes[].offset_m', 'traffic.vehicles_per_minute', 'traffic.class_mix.truck',
                 'traffic.stopped_fraction', 'time_of_day', 'weather', 'occluders[].size_m',
                 'mic_array.radius_m', 'mic_array.positions_m', 'camera.fx', 'camera.pitch_deg',
                 'audio.sample_rate', 'audio.chunk_ms', 'environment.fog_visibility_m']:
        assert f'`{name}`' in md, name
    assert f'| `camera.width` | int | px | {Camera().width} |' in md
