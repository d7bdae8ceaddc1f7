"""PNG contact sheet of a scenario: RGB, depth and thermal with ground-truth boxes, and the 8-channel
log-mel spectrogram of the second of audio that ends at each shown frame (what a causal student hears)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from .simulator import Simulator

__all__ = ['log_mel', 'contact_sheet']


def log_mel(x: np.ndarray, fs: int, n_mels: int = 80, n_fft: int = 1024, hop: int = 256) -> np.ndarray:
    """Log-mel power spectrogram (dB) per channel of x (samples, channels) -> (channels, n_mels, frames)."""
    import librosa
    out = []
    for ch in range(x.shape[1]):
        m = librosa.feature.melspectrogram(y=np.asarray(x[:, ch], dtype=np.float32), sr=fs, n_fft=n_fft,
                                           hop_length=hop, n_mels=n_mels, power=2.0)
        out.append(10 * np.log10(m + 1e-12))
    return np.stack(out)


def contact_sheet(sim: Simulator, out: Union[str, Path], times_s: Optional[Sequence[float]] = None,
                  n: int = 3, dpi: int = 110) -> Path:
    """Write a contact sheet (one row per chosen time) and return its path.

    Default times: the ``n`` whole-second frames with the most vehicles at least 8 px high, from 1 s on.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    sc = sim.scenario
    fr, fs = sc.frame_rate, sim.sample_rate
    if times_s is None:
        first = int(np.ceil(fr))
        cand = list(range(first, sim.n_frames, max(1, int(fr))))
        def n_big(gt):   # vehicles large enough to matter (box at least 8 px high)
            return int(np.sum(gt.boxes[:, 3] - gt.boxes[:, 1] >= 8)) if len(gt) else 0
        counts = [n_big(sim.renderer.render(sim.frame_time(k), k)[3]) for k in cand]
        order = np.argsort(-np.asarray(counts), kind='stable')[:n]
        ks = sorted(cand[i] for i in order) if cand else [0]
    else:
        ks = [min(int(round(t * fr)), sim.n_frames - 1) for t in times_s]
    fig, axes = plt.subplots(len(ks), 4, figsize=(20, 2.2 * len(ks) + 0.6), squeeze=False,
                             gridspec_kw={'width_ratios': [3, 3, 3, 2.2]})
    for row, k in enumerate(ks):
        f = sim.frame(k)
        t = sim.frame_time(k)
        n1 = int(round(t * fs))
        n0 = max(0, n1 - fs)
        audio = sim.audio_block(n0, max(n1, n0 + 2048))
        th = f.thermal
        depth = np.where(np.isnan(f.depth), np.nan, f.depth)
        panels = [(f.rgb, {}, 'RGB'),
                  (depth, dict(cmap='turbo', vmin=0, vmax=sc.camera.depth_range_m), 'depth [m]'),
                  (th, dict(cmap='inferno', vmin=sim.renderer.t_air - 6, vmax=sim.renderer.t_air + 40),
                   'thermal [K]')]
        for col, (img, kw, title) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(img, interpolation='nearest', **kw)
            for i in range(len(f.gt)):
                x1, y1, x2, y2 = f.gt.boxes[i]
                vis = [f.gt.visible_rgb, f.gt.visible_depth, f.gt.visible_thermal][col][i]
                colour = 'lime' if vis >= 0.3 else ('orange' if f.gt.audible[i] else 'red')
                ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1.0, ec=colour,
                                       ls='-' if not f.gt.occluded[i] else '--'))
                ax.text(x1, max(y1 - 1, 0), f'{f.gt.ids[i]}', color=colour, fontsize=6, va='bottom')
            ax.set_title(f'{title}  t={t:.1f}s', fontsize=8)
            ax.axis('off')
        mel = log_mel(audio, fs)
        ax = axes[row, 3]
        ax.imshow(np.concatenate(list(mel), axis=0), aspect='auto', origin='lower', cmap='magma',
                  vmin=mel.max() - 80, vmax=mel.max())
        ax.set_title(f'8-ch log-mel, {(n1 - n0) / fs:.1f} s ending at frame', fontsize=8)
        ax.set_yticks([40 + 80 * c for c in range(mel.shape[0])])
        ax.set_yticklabels([f'mic {c}' for c in range(mel.shape[0])], fontsize=6)
        ax.set_xticks([])
    fig.suptitle(f'{sc.name} (seed {sc.seed}): {sc.time_of_day}, {sc.weather}, ego {sc.ego.mode}. '
                 'Boxes: green visible in that modality, orange hidden but audible, red neither; '
                 'dashed = occluded', fontsize=9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    """``python -m mmdistill_sim.preview SCENARIO OUT.png [--seed N]``"""
    import argparse
    ap = argparse.ArgumentParser(description='Write a PNG contact sheet of a scenario.')
    ap.add_argument('scenario')
    ap.add_argument('out')
    ap.add_argument('--seed', type=int, default=None)
    ap.add_argument('--times', type=float, nargs='*', default=None)
    args = ap.parse_args(argv)
    print(contact_sheet(Simulator(args.scenario, seed=args.seed), args.out, args.times))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
