"""Benchmark machines from physical fault models (bench-only; independent of training/synth.py).

Three machines, 16 kHz, written in the DCASE 2021 layout by the same naming helper as
bench/datasets.py (`train/`, `source_test/`, `target_test/`); the first two in 10-s clips of
steady running, the valve in short clips of one actuation each:

- `bearing_pump`: a centrifugal pump on rolling-element bearings. Normal: shaft harmonics,
  impeller vane-pass tones, flow noise and two structural modes of the casing excited by that
  noise, motor hum. Faults: a defect on the outer race (impacts at BPFO), inner race (at BPFI,
  amplitude-modulated by the shaft rotation as the defect passes through the load zone) or a
  ball (at 2·BSF, modulated by the cage rate FTF). The defect frequencies follow from the
  bearing geometry; every impact rings both structural modes, and the intervals jitter with
  the rolling elements' slip.
- `gear_drive`: a motor driving a single-stage spur gear (19:47). Normal: gear-mesh harmonics
  with slight run-out modulation, motor hum and fan, housing modes excited by broadband noise.
  Faults: misalignment (a strong 2x shaft-rate component, mesh modulation at 2x the shaft
  rate), wear (mesh sidebands at ±k·shaft rate, raised mesh harmonics, friction noise) and a
  chipped tooth (once-per-revolution dip and phase jump of the mesh, and an impact).
- `solenoid_valve`: an AC solenoid valve opening and closing once per clip (0.9 s ± 10 %, the
  coil energised 20-150 ms in). Normal: inrush buzz until the plunger seats, then the holding
  hum (2x mains and even multiples); the plunger's impacts on its stop and on the elastomer
  seat, each a half-sine force whose contact time sets how much of the body's three modes
  (1.9, 3.7, 6.1 kHz, decays 10-22 ms) it rings; a flow burst rising as the orifice opens and
  settling to a steady hiss, cut at closing with a water-hammer thump of the pipe. Faults:
  sticking (late, softer and longer-contact impacts, stick-slip jerks and scraping on the way
  up, a longer inrush buzz, a slower flow rise), bounce (a worn seat: metal contact, rebounds
  with restitution up to 0.65, each flight shorter and letting a puff of flow through), leak
  (a narrow-band jet hiss while the valve is closed; severity = its level) and coil (a cracked
  shading ring: the plunger rattles on its stop at 2x mains, odd harmonics in the hum).

Source vs target domain: the pump and the drive run 1.3x faster in the target at a higher load
with more background noise; the valve's target is another line pressure and mounting (modes
x0.9, flow noise +6 dB, background +10 dB). The training split has 40 source clips and 4
target clips. Every clip draws its own speed (±2 %) or timings (±5 %) and mode frequencies
(±2 %), phases, component levels and gain (±3 dB). Test clips: 20 normal and 20 anomalous per
domain, fault kinds in turn, severities spread log-uniformly (the pump's evenly in dB) over a
range whose low end is subtle. All seeded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import signal

from bench.datasets import _name

SAMPLE_RATE = 16000
SECONDS = 10.0
TARGET_SPEED = 1.3  # target rpm / source rpm
OUTPUT_RMS = 0.05  # a normal clip's RMS in the file (before the per-clip gain)


@dataclass(frozen=True)
class Operating:
    rpm: float
    load: float  # 0..1: raises the process noise and the tonal levels
    background_db: float  # background (plant) noise power relative to the machine

    @property
    def attr(self) -> str:
        return f"rpm_{self.rpm:.0f}"


@dataclass(frozen=True)
class Bearing:
    """Rolling-element bearing geometry (a 6205-size deep-groove ball bearing by default)."""

    n_balls: int = 9
    ball_d: float = 7.94  # mm
    pitch_d: float = 39.04  # mm
    contact_deg: float = 0.0

    @property
    def _ratio(self) -> float:
        return self.ball_d / self.pitch_d * np.cos(np.radians(self.contact_deg))

    def bpfo(self, fr: float) -> float:
        """Ball pass frequency, outer race (Hz) at shaft rate fr (Hz)."""
        return self.n_balls / 2 * fr * (1 - self._ratio)

    def bpfi(self, fr: float) -> float:
        """Ball pass frequency, inner race."""
        return self.n_balls / 2 * fr * (1 + self._ratio)

    def bsf(self, fr: float) -> float:
        """Ball spin frequency (a ball defect strikes the races at 2·BSF)."""
        return self.pitch_d / (2 * self.ball_d) * fr * (1 - self._ratio**2)

    def ftf(self, fr: float) -> float:
        """Fundamental train (cage) frequency."""
        return fr / 2 * (1 - self._ratio)


PUMP = {"source": Operating(1800, 0.5, -28.0), "target": Operating(1800 * TARGET_SPEED, 0.8, -18.0)}
PUMP_BEARING = Bearing()
PUMP_VANES = 6
PUMP_MODES = ((2900.0, 260.0), (5600.0, 450.0))  # casing modes (centre Hz, bandwidth Hz)
BEARING_FAULTS = ("outer", "inner", "ball")
BEARING_SEVERITY_DB = (-30.0, -10.0)  # impact energy relative to the normal clip's

DRIVE = {
    "source": Operating(1500, 0.4, -28.0),
    "target": Operating(1500 * TARGET_SPEED, 0.75, -18.0),
}
PINION_TEETH, GEAR_TEETH = 19, 47
FAN_BLADES = 7
LINE_HZ = 50.0
HOUSING_MODES = ((1700.0, 200.0), (3900.0, 400.0))
GEAR_FAULTS = ("misalignment", "wear", "chipped")
GEAR_SEVERITY = (0.03, 0.45)  # unitless fault size; the low end is subtle


@dataclass(frozen=True)
class Line:
    """A solenoid valve's installation: line pressure and mounting."""

    pressure_bar: float
    mode_scale: float  # the body's mode frequencies relative to the source mounting
    flow_db: float  # flow noise relative to the source line's
    background_db: float  # background (plant) noise power relative to a normal clip

    @property
    def attr(self) -> str:
        return f"bar_{self.pressure_bar:.0f}"


VALVE = {"source": Line(3.0, 1.0, 0.0, -30.0), "target": Line(6.0, 0.9, 6.0, -20.0)}
VALVE_SECONDS = 0.9  # nominal clip length; every clip draws its own (±10 %)
# body modes (Hz, decay time s, gain), excited by the plunger's impacts
VALVE_MODES = ((1900.0, 0.022, 1.0), (3700.0, 0.016, 0.7), (6100.0, 0.010, 0.45))
MAINS_HZ = 50.0
PULL_IN_S = 0.016  # coil energised -> plunger on its stop
HOLD_S = 0.42  # coil energised -> coil de-energised
DROP_OUT_S = 0.020  # coil de-energised -> plunger on the seat
CONTACT_S = 0.15e-3  # contact time of the plunger on its (metal) stop
SEAT_CONTACT_S = 0.3e-3  # on the elastomer seat: softer, so the highest mode rings less
FLOW_RISE_S = 0.008  # flow rise time constant as the orifice opens
FLOW_SETTLE_S = 0.04  # the onset burst's decay to the steady flow
PIPE_HZ = 180.0  # the line's first acoustic mode (water hammer at closing)
LEAK_HZ = 4200.0  # centre of a seat leak's hiss
VALVE_SCALE = 0.25  # pre-scale units -> the file (a normal source clip: RMS ~0.035, peaks < 0.5)
VALVE_FAULTS = ("sticking", "bounce", "leak", "coil")
VALVE_SEVERITY = (0.05, 1.0)  # unitless fault size; the low end is subtle


# --- signal helpers --------------------------------------------------------------------------


def _unit(x: np.ndarray) -> np.ndarray:
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def _coloured(rng: np.random.Generator, n: int, sr: int, slope_db: float, lo: float = 20.0):
    """Unit-RMS noise with a spectral slope (dB per octave) above `lo` Hz."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.maximum(np.fft.rfftfreq(n, 1 / sr), lo)
    spec *= (f / lo) ** (slope_db / (20 * np.log10(2)))
    return _unit(np.fft.irfft(spec, n))


def _mode(x: np.ndarray, sr: int, centre: float, bandwidth: float) -> np.ndarray:
    """A lightly damped structural mode: a two-pole resonator driven by x."""
    r = np.exp(-np.pi * bandwidth / sr)
    a = [1.0, -2 * r * np.cos(2 * np.pi * centre / sr), r * r]
    return signal.lfilter([1 - r], a, x)


def _slow(rng: np.random.Generator, n: int, sr: int, hz: float) -> np.ndarray:
    """A smooth random wander (unit RMS) with energy below `hz`."""
    k = max(int(n / sr * hz), 1)
    knots = rng.standard_normal(k + 2)
    return _unit(np.interp(np.linspace(0, k + 1, n), np.arange(k + 2), knots))


def _shaft_angle(rng: np.random.Generator, fr: float, n: int, sr: int) -> np.ndarray:
    """Shaft angle (rad) at a mean rate fr with a slow ±0.2 % speed wander."""
    inst = fr * (1 + 0.002 * _slow(rng, n, sr, 0.5))
    return 2 * np.pi * np.cumsum(inst) / sr + rng.uniform(0, 2 * np.pi)


def _impact_times(rng: np.random.Generator, rate: float, n: int, sr: int, slip: float):
    """Impact times (s) at a mean `rate` (Hz), each interval jittered by the rolling elements'
    slip (relative standard deviation `slip`)."""
    count = int(n / sr * rate * 1.1) + 4
    gaps = np.maximum(1 + slip * rng.standard_normal(count), 0.5) / rate
    times = rng.uniform(0, 1 / rate) + np.concatenate([[0.0], np.cumsum(gaps[:-1])])
    return times[times * sr < n - 1]


def _place(times: np.ndarray, amps: np.ndarray, n: int, sr: int) -> np.ndarray:
    """An impulse train (n,) with impacts of `amps` at `times` (s), at sub-sample precision."""
    pos = times * sr
    i = pos.astype(int)
    frac = pos - i
    train = np.zeros(n)
    np.add.at(train, i, amps * (1 - frac))
    np.add.at(train, i + 1, amps * frac)
    return train


def _severities(rng: np.random.Generator, count: int, lo: float, hi: float, log: bool) -> list:
    """`count` severities spread evenly over [lo, hi] (log-spaced if `log`), in random order."""
    q = (np.arange(count) + rng.uniform(0, 1, count)) / count
    v = np.exp(np.log(lo) + q * (np.log(hi) - np.log(lo))) if log else lo + q * (hi - lo)
    return list(rng.permutation(v))


# --- bearing pump ----------------------------------------------------------------------------


def pump_clip(
    rng: np.random.Generator,
    op: Operating,
    fault: str | None = None,
    severity_db: float = -30.0,
    n: int = round(SECONDS * SAMPLE_RATE),
    sr: int = SAMPLE_RATE,
) -> np.ndarray:
    """One pump clip (n,) float64 at the file's scale; `fault` in BEARING_FAULTS or None."""
    t = np.arange(n) / sr
    fr = op.rpm / 60 * rng.uniform(0.98, 1.02)
    theta = _shaft_angle(rng, fr, n, sr)
    lvl = lambda: 10 ** (rng.uniform(-1.5, 1.5) / 20)  # noqa: E731  per-component level spread

    x = np.zeros(n)
    for k, a in enumerate((0.10, 0.05, 0.025, 0.012), start=1):  # residual unbalance, run-out
        x += a * lvl() * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    vane = (0.15 + 0.3 * op.load) * lvl()
    for k, a in enumerate((1.0, 0.35, 0.12), start=1):  # impeller vane pass and harmonics
        x += vane * a * np.cos(k * PUMP_VANES * theta + rng.uniform(0, 2 * np.pi))
    x += 0.04 * lvl() * np.cos(2 * np.pi * 2 * LINE_HZ * t + rng.uniform(0, 2 * np.pi))
    # flow noise (falling 4 dB/octave), pulsing slightly with the vane passage
    flow = _coloured(rng, n, sr, -4.0, lo=80.0) * (1 + 0.15 * np.cos(PUMP_VANES * theta))
    x += (0.25 + 0.5 * op.load) * lvl() * flow
    # the casing's modes, excited by the same turbulence (mostly the lower one)
    drive = rng.standard_normal(n)
    for (fc, bw), g in zip(PUMP_MODES, (0.12, 0.025), strict=True):
        x += g * (0.6 + op.load) * lvl() * _unit(_mode(drive, sr, fc, bw))
    scale = OUTPUT_RMS / np.sqrt(np.mean(x**2))

    if fault is not None:
        b = PUMP_BEARING
        if fault == "outer":  # stationary defect: constant-strength impacts at BPFO
            times = _impact_times(rng, b.bpfo(fr), n, sr, slip=0.01)
            amps = np.ones(times.size)
        elif fault == "inner":  # defect rotates with the shaft through the load zone
            times = _impact_times(rng, b.bpfi(fr), n, sr, slip=0.01)
            zone = rng.uniform(0, 2 * np.pi)
            amps = 0.1 + ((1 + np.cos(2 * np.pi * fr * times + zone)) / 2) ** 1.5
        elif fault == "ball":  # a spall on a ball hits both races; it orbits with the cage
            times = _impact_times(rng, 2 * b.bsf(fr), n, sr, slip=0.02)
            cage = rng.uniform(0, 2 * np.pi)
            amps = 0.2 + (1 + np.cos(2 * np.pi * b.ftf(fr) * times + cage)) / 2
        else:
            raise ValueError(f"unknown bearing fault {fault!r}")
        amps = amps * rng.uniform(0.7, 1.0, times.size)
        train = _place(times, amps, n, sr)
        ring = sum(
            g * _unit(_mode(train, sr, fc * rng.uniform(0.98, 1.02), bw))
            for (fc, bw), g in zip(PUMP_MODES, (1.0, 0.8), strict=True)
        )
        x += _unit(ring) * (OUTPUT_RMS / scale) * 10 ** (severity_db / 20)
    bg = _coloured(rng, n, sr, -3.0) * 10 ** ((op.background_db + rng.uniform(-2, 2)) / 20)
    return x * scale + bg * OUTPUT_RMS


# --- gear drive ------------------------------------------------------------------------------


def _wrap(a: np.ndarray) -> np.ndarray:
    return (a + np.pi) % (2 * np.pi) - np.pi


def drive_clip(
    rng: np.random.Generator,
    op: Operating,
    fault: str | None = None,
    severity: float = 0.3,
    n: int = round(SECONDS * SAMPLE_RATE),
    sr: int = SAMPLE_RATE,
) -> np.ndarray:
    """One gear-drive clip (n,) float64 at the file's scale; `fault` in GEAR_FAULTS or None."""
    if fault is not None and fault not in GEAR_FAULTS:
        raise ValueError(f"unknown gear fault {fault!r}")
    t = np.arange(n) / sr
    fr = op.rpm / 60 * rng.uniform(0.98, 1.02)  # motor / pinion shaft
    th_in = _shaft_angle(rng, fr, n, sr)
    th_out = th_in * PINION_TEETH / GEAR_TEETH + rng.uniform(0, 2 * np.pi)
    mesh_phase = PINION_TEETH * th_in
    lvl = lambda: 10 ** (rng.uniform(-1.5, 1.5) / 20)  # noqa: E731
    phase = lambda: rng.uniform(0, 2 * np.pi)  # noqa: E731
    s = severity

    harmonics = np.array([1.0, 0.4, 0.2, 0.1])
    h_phase = [phase() for _ in harmonics]
    runout = 1 + 0.04 * np.cos(th_in + phase()) + 0.03 * np.cos(th_out + phase())
    mesh_level = (0.3 + 0.5 * op.load) * lvl()

    def mesh(amps: np.ndarray, am: np.ndarray, pm: np.ndarray | float) -> np.ndarray:
        out = np.zeros(n)
        for h, (a, ph) in enumerate(zip(amps, h_phase, strict=True), start=1):
            out += a * np.cos(h * (mesh_phase + pm) + ph)
        return mesh_level * am * out

    one_x, two_x = 0.08 * lvl(), 0.03 * lvl()
    ph1, ph2 = phase(), phase()
    x = one_x * np.cos(th_in + ph1) + two_x * np.cos(2 * th_in + ph2)
    x += 0.05 * lvl() * np.cos(2 * np.pi * 2 * LINE_HZ * t + phase())  # motor hum
    x += 0.03 * lvl() * np.cos(FAN_BLADES * th_in + phase())  # cooling fan
    x += 0.12 * lvl() * _coloured(rng, n, sr, -3.0, lo=100.0)  # fan and windage noise
    drive = rng.standard_normal(n)
    for (fc, bw), g in zip(HOUSING_MODES, (0.08, 0.03), strict=True):
        x += g * (0.6 + op.load) * lvl() * _unit(_mode(drive, sr, fc, bw))
    healthy = mesh(harmonics, runout, 0.0)
    # the file's scale is the healthy machine's, so a fault adds energy
    scale = OUTPUT_RMS / np.sqrt(np.mean((x + healthy) ** 2))

    if fault is None:
        x += healthy
    elif fault == "misalignment":  # the coupling bends twice per turn
        am = runout + 0.5 * s * np.cos(2 * th_in + phase())
        x += mesh(harmonics, am, 0.4 * s * np.sin(2 * th_in + phase()))
        x += 0.25 * s * np.cos(2 * th_in + ph2) + 0.08 * s * np.cos(th_in + ph1)
    elif fault == "wear":  # uneven wear round the pinion: sidebands at +-k x shaft rate
        am = runout + sum(0.35 * s / k * np.cos(k * th_in + phase()) for k in range(1, 5))
        x += mesh(harmonics * (1 + 1.5 * s * np.arange(4)), am, 0.0)
        # sliding friction: broadband noise pulsing with the mesh
        friction = _coloured(rng, n, sr, 0.0, lo=800.0) * (0.5 + 0.5 * np.cos(mesh_phase)) ** 2
        x += 0.25 * s * mesh_level * _unit(friction)
    else:  # chipped: once per turn the damaged tooth meshes, a dip and a phase jump...
        width = 2 * np.pi / PINION_TEETH * 0.8
        angle = phase()
        w = np.exp(-0.5 * (_wrap(th_in - angle) / width) ** 2)
        x += mesh(harmonics, runout * (1 - 0.8 * s * w), 1.2 * s * w)
        # ...and its impact rings the housing
        hits = np.flatnonzero(np.diff(np.floor((th_in - angle) / (2 * np.pi))) > 0) / sr
        train = _place(hits, rng.uniform(0.7, 1.0, hits.size), n, sr)
        ring = sum(_mode(train, sr, fc, bw) for fc, bw in HOUSING_MODES)
        x += 0.4 * s * mesh_level * _unit(ring)
    bg = _coloured(rng, n, sr, -3.0) * 10 ** ((op.background_db + rng.uniform(-2, 2)) / 20)
    return x * scale + bg * OUTPUT_RMS


# --- solenoid valve --------------------------------------------------------------------------


def _ring(force: np.ndarray, sr: int, modes: list[tuple[float, float, float]]) -> np.ndarray:
    """The valve body's response to a force (n,): modes (Hz, decay time s, gain), each an
    impulse-invariant decaying sinusoid, so a longer contact excites the high modes less."""
    out = np.zeros(force.size)
    for f, tau, g in modes:
        r, w = np.exp(-1 / (tau * sr)), 2 * np.pi * f / sr
        out += g * signal.lfilter([0.0, r * np.sin(w)], [1.0, -2 * r * np.cos(w), r * r], force)
    return out


def _hit(force: np.ndarray, sr: int, t: float, momentum: float, contact: float) -> None:
    """Add one impact to `force` in place: a half-sine pulse of `contact` s starting at t s
    whose area is `momentum` (a short contact is broadband, a long one low-passed)."""
    width = contact * sr
    k = np.arange(int(t * sr), int(t * sr + width) + 2)
    k = k[k < force.size]
    pulse = np.sin(np.pi * np.clip((k - t * sr) / width, 0, 1))
    if pulse.sum() <= 0:  # contact shorter than a sample: a sub-sample impulse
        force += _place(np.array([t]), np.array([momentum]), force.size, sr)
        return
    force[k] += momentum * pulse / pulse.sum()


def _band(rng: np.random.Generator, n: int, sr: int, lo: float, hi: float) -> np.ndarray:
    """Unit-RMS noise band-passed to [lo, hi] Hz (second-order Butterworth)."""
    sos = signal.butter(2, [lo, min(hi, 0.45 * sr)], "bandpass", fs=sr, output="sos")
    return _unit(signal.sosfilt(sos, rng.standard_normal(n)))


def _gate(t: np.ndarray, start: float, stop: float, ramp: float) -> np.ndarray:
    """1 between start and stop (s), with raised-cosine edges of `ramp` s; 0 elsewhere."""
    up = np.clip((t - start) / ramp, 0, 1)
    down = np.clip((stop - t) / ramp, 0, 1)
    return np.sin(np.pi / 2 * np.minimum(up, down)) ** 2


def valve_clip(
    rng: np.random.Generator,
    line: Line,
    fault: str | None = None,
    severity: float = 0.3,
    sr: int = SAMPLE_RATE,
) -> np.ndarray:
    """One actuation of the solenoid valve, (n,) float64 at the file's scale, n ≈ 0.9 s ± 10 %;
    `fault` in VALVE_FAULTS or None, `severity` unitless (0.05 subtle .. 1 clear)."""
    if fault is not None and fault not in VALVE_FAULTS:
        raise ValueError(f"unknown valve fault {fault!r}")
    s = severity
    n = round(VALVE_SECONDS * rng.uniform(0.9, 1.1) * sr)
    t = np.arange(n) / sr
    lvl = lambda: 10 ** (rng.uniform(-1.5, 1.5) / 20)  # noqa: E731
    phase = lambda: rng.uniform(0, 2 * np.pi)  # noqa: E731
    jit = lambda: rng.uniform(0.95, 1.05)  # noqa: E731  per-clip timing spread
    modes = [
        (f * line.mode_scale * rng.uniform(0.98, 1.02), tau * jit(), g * lvl())
        for f, tau, g in VALVE_MODES
    ]
    mains = MAINS_HZ * (1 + 0.002 * rng.standard_normal())
    flow_gain = 10 ** (line.flow_db / 20)

    # the sequence: coil on, plunger lifts onto its stop (opening), coil off, the spring drives
    # the plunger back onto the seat (closing)
    t_on = rng.uniform(0.02, 0.15)
    t_open = t_on + PULL_IN_S * jit()
    t_off = t_on + HOLD_S * jit()
    t_close = t_off + DROP_OUT_S * jit()
    v_open, v_close = 0.8 * lvl(), 1.0 * lvl()  # impact momenta
    c_open, c_close = CONTACT_S * jit(), SEAT_CONTACT_S * jit()
    rise = FLOW_RISE_S * jit()
    force = np.zeros(n)
    flow_env = np.zeros(n)
    if fault == "sticking":  # friction on the plunger: late, slow, soft and smeared
        delay = 0.06 * s * jit()
        t_open += delay
        t_close += 0.03 * s * jit()
        v_open *= 1 - 0.2 * s
        v_close *= 1 - 0.15 * s  # the spring still closes it, a little slower
        c_open *= 1 + 2.5 * s
        c_close *= 1 + 0.3 * s
        rise *= 1 + 5 * s
        # creeping up against the friction: stick-slip jerks and a scraping noise
        for dt in rng.uniform(0.002, 0.03, 4) * s:
            _hit(force, sr, t_open - dt, 0.12 * s * v_open * rng.uniform(0.5, 1), c_open)
        creep = _gate(t, t_open - delay - PULL_IN_S / 2, t_open, 0.002)
        scrape = 0.08 * s * lvl() * creep * _band(rng, n, sr, 1000.0, 3000.0)
    else:
        scrape = np.zeros(n)

    # coil: inrush buzz until the plunger seats on its stop, then the holding hum (force on
    # the plunger ~ i^2: mostly twice the mains frequency and its even multiples)
    hum = np.zeros(n)
    for k, a in ((2, 1.0), (4, 0.45), (6, 0.2), (8, 0.1), (1, 0.08), (3, 0.05)):
        hum += a * lvl() * np.cos(2 * np.pi * k * mains * t + phase())
    coil = 0.06 * _gate(t, t_on, t_off, 0.002) * (1 + 2.0 * _gate(t, t_on, t_open, 0.002))
    x = coil * hum * lvl() + scrape
    for tc in (t_on, t_off):  # the switching clicks (contact arc, a few samples)
        _hit(force, sr, tc, 0.04 * lvl(), 0.05e-3)

    # impacts ring the body's modes
    if fault == "bounce":  # a worn seat: its elastomer gone, metal meets metal
        c_close *= 1 - 0.6 * s
    _hit(force, sr, t_open, v_open, c_open)
    _hit(force, sr, t_close, v_close, c_close)
    if fault == "bounce":  # ...and the plunger rebounds (restitution e), each flight shorter
        e = 0.65 * s
        seat = (t_close, v_close, c_close, 0.08 * e, e, True)
        stop = (t_open, v_open, c_open, 0.02 * e, e / 2, False)
        for at, v, c, dt, ek, on_seat in (seat, stop):
            amp = v * ek
            while amp > 0.03 * v and at + dt < t[-1]:
                if on_seat:  # off the seat: a puff of flow in flight
                    flow_env += 0.8 * amp / v * _gate(t, at, at + dt, dt / 3 + 1e-4)
                at += dt
                _hit(force, sr, at, amp, c)
                amp, dt = amp * ek, dt * ek
    if fault == "coil":  # cracked shading ring: the force drops to zero twice per cycle and
        # the plunger rattles on its stop at 2x mains; the flux turns asymmetric (odd harmonics)
        times = t_open + 0.01 + np.arange(0, t_off - t_open - 0.01, 1 / (2 * mains))
        times += rng.normal(0, 0.0004, times.size)
        amps = 0.15 * s * v_open * rng.uniform(0.6, 1.0, times.size)
        force += _place(times, amps, n, sr)
        odd = sum(
            a * np.cos(2 * np.pi * k * mains * t + phase())
            for k, a in ((1, 1.0), (3, 0.7), (5, 0.5), (7, 0.3))
        )
        x += 0.06 * s * _gate(t, t_on, t_off, 0.002) * odd
    x += _ring(force, sr, modes)

    # flow: a burst as the line downstream fills, settling to a steady hiss; cut at closing
    after = np.maximum(t - t_open, 0)
    env = (
        (1 - np.exp(-after / rise))
        * (1 + 2.0 * np.exp(-after / (FLOW_SETTLE_S + rise)))
        * (t > t_open)
    )
    env *= np.clip(1 - (t - t_close) / 0.004, 0, 1)
    flow_env += env
    flow = _band(rng, n, sr, 400.0, 5000.0)
    x += 0.12 * flow_gain * lvl() * flow_env * flow
    # water hammer at closing: the pipe's first acoustic mode, scaled by the flow stopped
    hammer = np.zeros(n)
    _hit(hammer, sr, t_close, 1.0, 0.002)
    x += 0.3 * flow_gain * lvl() * _ring(hammer, sr, [(PIPE_HZ * jit(), 0.05, 1.0)])

    if fault == "leak":  # seat leak: a jet through the gap hisses while the valve is closed
        fc = LEAK_HZ * rng.uniform(0.9, 1.1)
        closed = 1 - _gate(t, t_open, t_close, 0.003)
        x += 0.008 * s * flow_gain * closed * _band(rng, n, sr, fc / 1.15, fc * 1.15)
    bg = _coloured(rng, n, sr, -3.0) * 10 ** ((line.background_db + rng.uniform(-2, 2)) / 20)
    return x * VALVE_SCALE + bg * OUTPUT_RMS


# --- datasets --------------------------------------------------------------------------------


def _write_dataset(
    out: Path,
    rng: np.random.Generator,
    domains: dict[str, Any],  # Operating or Line: what a file name's attribute says
    make: Callable[[np.random.Generator, Any, str | None, float], np.ndarray],
    faults: tuple[str, ...],
    severity: tuple[float, float],
    log_severity: bool,
    describe: Callable[[float], str],
    n_train: int,
    n_target_train: int,
    n_test: int,
) -> dict[str, int]:
    import soundfile as sf

    counts = {"train": 0, "source_test": 0, "target_test": 0}

    def write(folder: str, name: str, x: np.ndarray) -> None:
        (out / folder).mkdir(parents=True, exist_ok=True)
        gain = 10 ** (rng.uniform(-3, 3) / 20)
        y = np.clip(x * gain, -1, 1).astype(np.float32)
        sf.write(out / folder / name, y, SAMPLE_RATE, subtype="PCM_16")
        counts[folder] += 1

    for domain, count in (("source", n_train), ("target", n_target_train)):
        op = domains[domain]
        for i in range(count):
            attr = op.attr
            write("train", _name(domain, "train", "normal", i, attr), make(rng, op, None, 0.0))
    for domain in ("source", "target"):
        op = domains[domain]
        for i in range(n_test):
            attr = op.attr
            write(
                f"{domain}_test",
                _name(domain, "test", "normal", i, attr),
                make(rng, op, None, 0.0),
            )
        sev = _severities(rng, n_test, *severity, log=log_severity)
        for i in range(n_test):
            kind = faults[i % len(faults)]
            attr = f"{op.attr}_{kind}_{describe(sev[i])}"
            write(
                f"{domain}_test",
                _name(domain, "test", "anomaly", i, attr),
                make(rng, op, kind, float(sev[i])),
            )
    return counts


def bearing_pump(
    out: Path, seed: int = 0, n_train: int = 40, n_target_train: int = 4, n_test: int = 20
) -> dict[str, int]:
    """The bearing-pump dataset under `out`; returns file counts per folder."""
    return _write_dataset(
        Path(out),
        np.random.default_rng([seed, 1]),
        PUMP,
        pump_clip,
        BEARING_FAULTS,
        BEARING_SEVERITY_DB,
        False,
        lambda v: f"{v:.0f}dB".replace("-", "minus"),
        n_train,
        n_target_train,
        n_test,
    )


def gear_drive(
    out: Path, seed: int = 0, n_train: int = 40, n_target_train: int = 4, n_test: int = 20
) -> dict[str, int]:
    """The gear-drive dataset under `out`; returns file counts per folder."""
    return _write_dataset(
        Path(out),
        np.random.default_rng([seed, 2]),
        DRIVE,
        drive_clip,
        GEAR_FAULTS,
        GEAR_SEVERITY,
        True,
        lambda v: f"severity{100 * v:.0f}",
        n_train,
        n_target_train,
        n_test,
    )


def solenoid_valve(
    out: Path, seed: int = 0, n_train: int = 40, n_target_train: int = 4, n_test: int = 20
) -> dict[str, int]:
    """The solenoid-valve dataset (short clips, one actuation each) under `out`; returns
    file counts per folder."""
    return _write_dataset(
        Path(out),
        np.random.default_rng([seed, 3]),
        VALVE,
        valve_clip,
        VALVE_FAULTS,
        VALVE_SEVERITY,
        True,
        lambda v: f"severity{100 * v:.0f}",
        n_train,
        n_target_train,
        n_test,
    )
