//! Status LEDs: a state machine ([`LedState`]) that turns events into three lamps, and the
//! drivers that light them: the Linux LED class ([`SysfsLeds`]: `brightness`, blinking through the
//! kernel's `timer` trigger) and GPIO character devices ([`GpioLeds`], feature-free, through the
//! kernel's GPIO v2 ioctl interface; blinking by the sink's timer).
//!
//! Legend (README.md): all off — not running; green steady — ready; green blinking — scoring;
//! red steady — positive alert, latched until acknowledged (`ctsentry ack`); red blinking —
//! fault (engine, disk, serial, watch, queue); amber steady — degraded (e.g. scoring on the CPU
//! because the GPU is unavailable). While a fault is active the green LED is off: the box must
//! never look "all good" when it is not scoring. Red blinking covers a latched alert during a
//! fault; the alert shows steady again once the fault clears.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{AlertSink, Cleared, Event, FaultKind};

/// One lamp's look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lamp {
    /// Dark.
    Off,
    /// Lit.
    On,
    /// Blinking (500 ms on, 500 ms off).
    Blink,
}

/// Opens the LEDs of `[alert.led]` with their driver (sysfs LED class or GPIO character device).
pub fn open_configured(l: &crate::config::LedSettings) -> std::io::Result<Box<dyn LedDriver>> {
    use crate::config::LedDriver as Driver;
    Ok(match l.driver {
        Driver::Sysfs => Box::new(SysfsLeds::open([l.green.clone().into(), l.red.clone().into(), l.amber.clone().into()])?),
        Driver::Gpio => Box::new(GpioLeds::open([&l.green, &l.red, &l.amber], l.active_low)?),
    })
}

/// Blink half-period.
pub const BLINK: Duration = Duration::from_millis(500);

/// What the LEDs show, from the events seen.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LedState {
    running: bool,
    scoring: bool,
    latched: bool,
    degraded: bool,
    drift: bool,
    faults: HashSet<FaultKind>,
}

impl LedState {
    /// Applies one event.
    pub fn apply(&mut self, event: &Event) {
        match *event {
            Event::Ready { latched } => {
                self.running = true;
                self.latched |= latched.is_some();
            }
            Event::Scoring { busy } => self.scoring = busy,
            Event::Alert { .. } => self.latched = true,
            Event::Clear { what: Cleared::Ack } => self.latched = false,
            Event::Fault { kind } => {
                self.faults.insert(kind);
            }
            Event::Clear { what: Cleared::Fault(kind) } => {
                self.faults.remove(&kind);
            }
            Event::Degraded { on } => self.degraded = on,
            Event::Drift { on } => self.drift = on,
            Event::Heartbeat { .. } | Event::Negative { .. } | Event::Stopping | Event::Reject { .. } => {}
        }
    }

    /// The state a status snapshot describes (the admin's page draws the lamps from it).
    pub fn of(running: bool, scoring: bool, latched: bool, degraded: bool, drift: bool, faults: impl IntoIterator<Item = FaultKind>) -> LedState {
        LedState { running, scoring, latched, degraded, drift, faults: faults.into_iter().collect() }
    }

    /// Marks the daemon stopped: everything dark.
    pub fn stop(&mut self) {
        *self = LedState::default();
    }

    /// The lamps: green, red, amber.
    pub fn lamps(&self) -> [Lamp; 3] {
        if !self.running {
            return [Lamp::Off; 3];
        }
        let fault = !self.faults.is_empty();
        let green = if fault {
            Lamp::Off
        } else if self.scoring {
            Lamp::Blink
        } else {
            Lamp::On
        };
        let red = if fault {
            Lamp::Blink
        } else if self.latched {
            Lamp::On
        } else {
            Lamp::Off
        };
        let amber = if self.degraded || self.drift { Lamp::On } else { Lamp::Off };
        [green, red, amber]
    }
}

/// Lights one LED.
pub trait LedDriver: Send {
    /// Shows `lamp` on LED `index` (0 green, 1 red, 2 amber).
    fn set(&mut self, index: usize, lamp: Lamp) -> std::io::Result<()>;
    /// For drivers without hardware blinking: the blink phase changed (on = lit half).
    fn blink_phase(&mut self, _on: bool) -> std::io::Result<()> {
        Ok(())
    }
}

/// The Linux LED class: `<dir>/brightness`, `<dir>/trigger`, `<dir>/delay_on|delay_off`.
pub struct SysfsLeds {
    dirs: [PathBuf; 3],
}

impl SysfsLeds {
    /// LEDs at these `/sys/class/leds/<name>` folders; each must have a writable `brightness`.
    pub fn open(dirs: [PathBuf; 3]) -> std::io::Result<SysfsLeds> {
        for d in &dirs {
            let b = d.join("brightness");
            std::fs::OpenOptions::new().write(true).open(&b).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", b.display())))?;
        }
        Ok(SysfsLeds { dirs })
    }

    fn max(&self, i: usize) -> String {
        std::fs::read_to_string(self.dirs[i].join("max_brightness")).map(|s| s.trim().to_string()).ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "1".into())
    }

    fn write(&self, i: usize, file: &str, value: &str) -> std::io::Result<()> {
        let p = self.dirs[i].join(file);
        std::fs::write(&p, value).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))
    }
}

impl LedDriver for SysfsLeds {
    fn set(&mut self, i: usize, lamp: Lamp) -> std::io::Result<()> {
        match lamp {
            Lamp::Off => {
                self.write(i, "trigger", "none")?;
                self.write(i, "brightness", "0")
            }
            Lamp::On => {
                self.write(i, "trigger", "none")?;
                let max = self.max(i);
                self.write(i, "brightness", &max)
            }
            Lamp::Blink => {
                // The timer trigger creates delay_on/delay_off; set them after selecting it.
                self.write(i, "trigger", "timer")?;
                let ms = BLINK.as_millis().to_string();
                self.write(i, "delay_on", &ms)?;
                self.write(i, "delay_off", &ms)
            }
        }
    }
}

/// Splits a GPIO line name `CHIP:LINE` (e.g. `/dev/gpiochip0:17`).
fn gpio_spec(spec: &str) -> std::io::Result<(&str, u32)> {
    let (chip, off) = spec.rsplit_once(':').ok_or_else(|| std::io::Error::other(format!("{spec:?}: expected CHIP:LINE, e.g. /dev/gpiochip0:17")))?;
    let off = off.parse().map_err(|_| std::io::Error::other(format!("{spec:?}: line offset is not a number")))?;
    Ok((chip, off))
}

/// LEDs on GPIO lines (`/dev/gpiochipN`, line offset), driven through the GPIO v2 character
/// device ioctl; `active_low` inverts them. Blinking is done by the sink's timer.
pub struct GpioLeds {
    lines: [gpio::Line; 3],
    shown: [Lamp; 3],
}

impl GpioLeds {
    /// Requests the three lines, given as `CHIP:OFFSET` (e.g. `/dev/gpiochip0:17`), as outputs.
    pub fn open(specs: [&str; 3], active_low: bool) -> std::io::Result<GpioLeds> {
        let mut lines = Vec::new();
        for s in specs {
            let (chip, off) = gpio_spec(s)?;
            lines.push(gpio::Line::request_output(chip, off, active_low).map_err(|e| std::io::Error::new(e.kind(), format!("{s}: {e}")))?);
        }
        let lines: [gpio::Line; 3] = lines.try_into().map_err(|_| std::io::Error::other("three LEDs"))?;
        Ok(GpioLeds { lines, shown: [Lamp::Off; 3] })
    }
}

impl LedDriver for GpioLeds {
    fn set(&mut self, i: usize, lamp: Lamp) -> std::io::Result<()> {
        self.shown[i] = lamp;
        self.lines[i].set(lamp == Lamp::On || lamp == Lamp::Blink)
    }

    fn blink_phase(&mut self, on: bool) -> std::io::Result<()> {
        for i in 0..3 {
            if self.shown[i] == Lamp::Blink {
                self.lines[i].set(on)?;
            }
        }
        Ok(())
    }
}

/// An acknowledge push-button on a GPIO input line (`CHIP:LINE`); a press is a release-to-pressed
/// edge, debounced by requiring 3 equal reads (the daemon polls every ~100 ms).
pub struct AckButton {
    line: gpio::Line,
    pressed: bool,
    same: u8,
}

impl AckButton {
    /// Requests the line as an input.
    pub fn open(spec: &str, active_low: bool) -> std::io::Result<AckButton> {
        let (chip, off) = gpio_spec(spec)?;
        let mut line = gpio::Line::request_input(chip, off, active_low).map_err(|e| std::io::Error::new(e.kind(), format!("{spec}: {e}")))?;
        let pressed = line.get()?;
        Ok(AckButton { line, pressed, same: 0 })
    }

    /// True once per press.
    pub fn poll(&mut self) -> std::io::Result<bool> {
        let now = self.line.get()?;
        if now == self.pressed {
            self.same = 0;
            return Ok(false);
        }
        self.same += 1;
        if self.same < 3 {
            return Ok(false);
        }
        self.same = 0;
        self.pressed = now;
        Ok(now)
    }
}

/// The LED sink: applies events to a [`LedState`] and drives the LEDs on change.
pub struct LedSink {
    state: LedState,
    driver: Box<dyn LedDriver>,
    shown: [Option<Lamp>; 3],
    phase: (bool, Instant),
    failing: bool,
}

impl LedSink {
    /// A sink over `driver`; all LEDs are switched off at once.
    pub fn new(driver: Box<dyn LedDriver>) -> LedSink {
        let mut s = LedSink { state: LedState::default(), driver, shown: [None; 3], phase: (true, Instant::now()), failing: false };
        s.show();
        s
    }

    fn show(&mut self) {
        let lamps = self.state.lamps();
        for (i, lamp) in lamps.iter().enumerate() {
            if self.shown[i] != Some(*lamp) {
                match self.driver.set(i, *lamp) {
                    Ok(()) => {
                        self.shown[i] = Some(*lamp);
                        self.failing = false;
                    }
                    Err(e) => {
                        if !self.failing {
                            log::error!("LED: {e}");
                        }
                        self.failing = true;
                    }
                }
            }
        }
    }

    /// The current state (for tests and `doctor`).
    pub fn state(&self) -> &LedState {
        &self.state
    }
}

impl AlertSink for LedSink {
    fn name(&self) -> &'static str {
        "led"
    }

    fn handle(&mut self, event: &Event) {
        self.state.apply(event);
        self.show();
    }

    fn tick(&mut self) {
        if self.failing {
            self.shown = [None; 3]; // retry
        }
        self.show();
        if self.phase.1.elapsed() >= BLINK {
            self.phase = (!self.phase.0, Instant::now());
            let _ = self.driver.blink_phase(self.phase.0);
        }
    }

    fn shutdown(&mut self) {
        self.state.stop();
        self.show();
    }
}

/// A minimal GPIO v2 character-device client (linux/gpio.h): request one output line, set it.
mod gpio {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    const GPIO_V2_LINES_MAX: usize = 64;
    const GPIO_MAX_NAME_SIZE: usize = 32;
    const GPIO_V2_LINE_NUM_ATTRS_MAX: usize = 10;
    const GPIO_V2_LINE_FLAG_ACTIVE_LOW: u64 = 1 << 1;
    const GPIO_V2_LINE_FLAG_INPUT: u64 = 1 << 2;
    const GPIO_V2_LINE_FLAG_OUTPUT: u64 = 1 << 3;

    #[repr(C)]
    #[derive(Clone, Copy)]
    struct LineAttribute {
        id: u32,
        padding: u32,
        value: u64,
    }

    #[repr(C)]
    #[derive(Clone, Copy)]
    struct LineConfigAttribute {
        attr: LineAttribute,
        mask: u64,
    }

    #[repr(C)]
    struct LineConfig {
        flags: u64,
        num_attrs: u32,
        padding: [u32; 5],
        attrs: [LineConfigAttribute; GPIO_V2_LINE_NUM_ATTRS_MAX],
    }

    #[repr(C)]
    struct LineRequest {
        offsets: [u32; GPIO_V2_LINES_MAX],
        consumer: [u8; GPIO_MAX_NAME_SIZE],
        config: LineConfig,
        num_lines: u32,
        event_buffer_size: u32,
        padding: [u32; 5],
        fd: i32,
    }

    #[repr(C)]
    struct LineValues {
        bits: u64,
        mask: u64,
    }

    const fn iowr(nr: u64, size: usize) -> u64 {
        (3 << 30) | ((size as u64) << 16) | (0xB4 << 8) | nr
    }

    /// One requested output line.
    pub struct Line {
        fd: OwnedFd,
    }

    impl Line {
        pub fn request_output(chip: &str, offset: u32, active_low: bool) -> std::io::Result<Line> {
            Self::request(chip, offset, GPIO_V2_LINE_FLAG_OUTPUT | if active_low { GPIO_V2_LINE_FLAG_ACTIVE_LOW } else { 0 })
        }

        pub fn request_input(chip: &str, offset: u32, active_low: bool) -> std::io::Result<Line> {
            Self::request(chip, offset, GPIO_V2_LINE_FLAG_INPUT | if active_low { GPIO_V2_LINE_FLAG_ACTIVE_LOW } else { 0 })
        }

        fn request(chip: &str, offset: u32, flags: u64) -> std::io::Result<Line> {
            let chip = std::fs::OpenOptions::new().read(true).write(true).open(chip)?;
            // SAFETY: LineRequest is plain old data; all-zero is a valid value.
            let mut req: LineRequest = unsafe { std::mem::zeroed() };
            req.offsets[0] = offset;
            req.consumer[..8].copy_from_slice(b"ctsentry");
            req.config.flags = flags;
            req.num_lines = 1;
            let code = iowr(0x07, std::mem::size_of::<LineRequest>());
            // SAFETY: GPIO_V2_GET_LINE_IOCTL with a correctly sized, initialised request.
            let r = unsafe { libc::ioctl(chip.as_raw_fd(), code as _, &mut req as *mut LineRequest) };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: the kernel returned a new file descriptor we now own.
            Ok(Line { fd: unsafe { OwnedFd::from_raw_fd(req.fd) } })
        }

        pub fn get(&mut self) -> std::io::Result<bool> {
            let mut v = LineValues { bits: 0, mask: 1 };
            let code = iowr(0x0E, std::mem::size_of::<LineValues>());
            // SAFETY: GPIO_V2_LINE_GET_VALUES_IOCTL on our line fd with a valid struct.
            let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), code as _, &mut v as *mut LineValues) };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(v.bits & 1 == 1)
        }

        pub fn set(&mut self, on: bool) -> std::io::Result<()> {
            let mut v = LineValues { bits: u64::from(on), mask: 1 };
            let code = iowr(0x0F, std::mem::size_of::<LineValues>());
            // SAFETY: GPIO_V2_LINE_SET_VALUES_IOCTL on our line fd with a valid struct.
            let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), code as _, &mut v as *mut LineValues) };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        }
    }

    #[cfg(test)]
    #[test]
    fn struct_sizes_match_the_kernel_abi() {
        // linux/gpio.h: sizeof(struct gpio_v2_line_request) == 592, gpio_v2_line_values == 16.
        assert_eq!(std::mem::size_of::<LineRequest>(), 592);
        assert_eq!(std::mem::size_of::<LineValues>(), 16);
        assert_eq!(std::mem::size_of::<LineConfig>(), 272);
    }
}
