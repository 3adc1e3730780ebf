//! Resource-control properties (`-p NAME=VALUE`) in systemd's own syntax, parsed and checked
//! before anything is created, and encoded with the exact D-Bus types systemd expects for a
//! transient unit (as `systemd-run -p` encodes them).

use std::collections::BTreeSet;

use thiserror::Error;
use zbus::{OwnedVariant, Variant};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PropertyError {
    #[error("property '{0}' is not NAME=VALUE (e.g. -p MemoryMax=1G)")]
    Syntax(String),
    #[error("unknown property '{name}'; berth supports {}", supported_list())]
    Unknown { name: String },
    #[error("{name}={value}: {why}")]
    BadValue {
        name: String,
        value: String,
        why: String,
    },
    #[error(
        "property {name} is not supported by this systemd (version {version}); leave it out or upgrade systemd"
    )]
    Unsupported { name: String, version: String },
}

/// How a property's value is written and sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `t`: 1-10000, or `idle` (0) for CPU weights.
    Weight,
    /// `CPUQuotaPerSecUSec` `t`: a percentage of one CPU.
    CpuQuota,
    /// `ay`: a CPU or NUMA node set such as `0-3,6`.
    CpuSet,
    /// `t` bytes (base 1024), `infinity`, or `N%` of RAM (`NAMEScale` `u`).
    Memory,
    /// `t`: a count, `infinity`, or `N%` (`TasksMaxScale` `u`).
    Tasks,
    /// `a(st)`: `DEVICE WEIGHT`.
    DeviceWeight,
    /// `a(st)`: `DEVICE BYTES` (base 1000, as systemd parses bandwidth), or `infinity`.
    DeviceBandwidth,
    /// `a(st)`: `DEVICE IOPS` (base 1000), or `infinity`.
    DeviceIops,
    /// `a(st)` in µs: `DEVICE TIMESPAN`.
    DeviceLatency,
    /// `b`.
    Boolean,
}

/// (name on the command line, name on D-Bus, kind). The D-Bus name is also what systemd's
/// Scope interface exposes, which is how support is detected.
const PROPERTIES: &[(&str, &str, Kind)] = &[
    ("CPUWeight", "CPUWeight", Kind::Weight),
    ("StartupCPUWeight", "StartupCPUWeight", Kind::Weight),
    ("CPUQuota", "CPUQuotaPerSecUSec", Kind::CpuQuota),
    ("AllowedCPUs", "AllowedCPUs", Kind::CpuSet),
    ("AllowedMemoryNodes", "AllowedMemoryNodes", Kind::CpuSet),
    ("IOWeight", "IOWeight", Kind::Weight),
    ("StartupIOWeight", "StartupIOWeight", Kind::Weight),
    ("IODeviceWeight", "IODeviceWeight", Kind::DeviceWeight),
    (
        "IOReadBandwidthMax",
        "IOReadBandwidthMax",
        Kind::DeviceBandwidth,
    ),
    (
        "IOWriteBandwidthMax",
        "IOWriteBandwidthMax",
        Kind::DeviceBandwidth,
    ),
    ("IOReadIOPSMax", "IOReadIOPSMax", Kind::DeviceIops),
    ("IOWriteIOPSMax", "IOWriteIOPSMax", Kind::DeviceIops),
    (
        "IODeviceLatencyTargetSec",
        "IODeviceLatencyTargetUSec",
        Kind::DeviceLatency,
    ),
    ("MemoryMin", "MemoryMin", Kind::Memory),
    ("MemoryLow", "MemoryLow", Kind::Memory),
    ("MemoryHigh", "MemoryHigh", Kind::Memory),
    ("MemoryMax", "MemoryMax", Kind::Memory),
    ("MemorySwapMax", "MemorySwapMax", Kind::Memory),
    ("TasksMax", "TasksMax", Kind::Tasks),
    ("CPUAccounting", "CPUAccounting", Kind::Boolean),
    ("IOAccounting", "IOAccounting", Kind::Boolean),
    ("MemoryAccounting", "MemoryAccounting", Kind::Boolean),
    ("TasksAccounting", "TasksAccounting", Kind::Boolean),
];

fn supported_list() -> String {
    PROPERTIES
        .iter()
        .map(|(name, _, _)| *name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A value ready for D-Bus.
#[derive(Debug, Clone, PartialEq)]
pub enum Encoded {
    U64(u64),
    U32(u32),
    Bool(bool),
    Bytes(Vec<u8>),
    Devices(Vec<(String, u64)>),
}

impl Encoded {
    pub fn to_variant(&self) -> Result<OwnedVariant, zbus::Error> {
        let variant = match self {
            Self::U64(v) => Variant::from(*v),
            Self::U32(v) => Variant::from(*v),
            Self::Bool(v) => Variant::from(*v),
            Self::Bytes(v) => Variant::from(v.clone()),
            Self::Devices(v) => Variant::from(v.clone()),
        };
        OwnedVariant::try_from(variant)
    }

    /// The D-Bus signature, for tests and messages.
    pub fn signature(&self) -> &'static str {
        match self {
            Self::U64(_) => "t",
            Self::U32(_) => "u",
            Self::Bool(_) => "b",
            Self::Bytes(_) => "ay",
            Self::Devices(_) => "a(st)",
        }
    }
}

/// One `-p NAME=VALUE`, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Property {
    /// As the user wrote it (kept in the machine's definition).
    pub name: String,
    pub value: String,
    /// The property systemd reads it as (`CPUQuotaPerSecUSec`, `MemoryMaxScale`, …).
    pub dbus_name: String,
    /// The readable property whose presence says this systemd supports it.
    pub probe_name: &'static str,
    pub encoded: Encoded,
}

impl Property {
    /// Parses `NAME=VALUE` in systemd's syntax.
    pub fn parse(assignment: &str) -> Result<Self, PropertyError> {
        let (name, value) = assignment
            .split_once('=')
            .filter(|(n, _)| !n.is_empty())
            .ok_or_else(|| PropertyError::Syntax(assignment.to_owned()))?;
        let (name, value) = (name.trim(), value.trim());
        let &(canonical, dbus_name, kind) = PROPERTIES
            .iter()
            .find(|(n, _, _)| *n == name)
            .ok_or_else(|| PropertyError::Unknown {
                name: name.to_owned(),
            })?;
        let bad = |why: &str| PropertyError::BadValue {
            name: name.to_owned(),
            value: value.to_owned(),
            why: why.to_owned(),
        };
        let mut out_name = dbus_name.to_owned();
        let encoded = match kind {
            Kind::Weight => Encoded::U64(
                parse_weight(
                    value,
                    dbus_name.starts_with("CPU") || dbus_name.starts_with("StartupCPU"),
                )
                .map_err(|w| bad(&w))?,
            ),
            Kind::CpuQuota => Encoded::U64(parse_cpu_quota(value).map_err(|w| bad(&w))?),
            Kind::CpuSet => Encoded::Bytes(parse_cpu_set(value).map_err(|w| bad(&w))?),
            Kind::Memory | Kind::Tasks => match value.strip_suffix('%') {
                Some(percent) => {
                    out_name = format!("{dbus_name}Scale");
                    Encoded::U32(parse_percent_scale(percent).map_err(|w| bad(&w))?)
                }
                None if kind == Kind::Memory => {
                    Encoded::U64(parse_size(value, 1024).map_err(|w| bad(&w))?)
                }
                None => Encoded::U64(parse_count(value).map_err(|w| bad(&w))?),
            },
            Kind::DeviceWeight => {
                let (device, weight) = split_device(value).map_err(|w| bad(&w))?;
                Encoded::Devices(vec![(
                    device,
                    parse_weight(weight, false).map_err(|w| bad(&w))?,
                )])
            }
            Kind::DeviceBandwidth | Kind::DeviceIops => {
                let (device, amount) = split_device(value).map_err(|w| bad(&w))?;
                Encoded::Devices(vec![(
                    device,
                    parse_size(amount, 1000).map_err(|w| bad(&w))?,
                )])
            }
            Kind::DeviceLatency => {
                let (device, span) = split_device(value).map_err(|w| bad(&w))?;
                Encoded::Devices(vec![(
                    device,
                    parse_timespan_usec(span).map_err(|w| bad(&w))?,
                )])
            }
            Kind::Boolean => Encoded::Bool(parse_bool(value).map_err(|w| bad(&w))?),
        };
        Ok(Self {
            name: canonical.to_owned(),
            value: value.to_owned(),
            dbus_name: out_name,
            probe_name: dbus_name,
            encoded,
        })
    }

    /// `NAME=VALUE` as written in the definition.
    pub fn assignment(&self) -> String {
        format!("{}={}", self.name, self.value)
    }

    /// The device a per-device property names, if any.
    pub fn device(&self) -> Option<&str> {
        match &self.encoded {
            Encoded::Devices(list) => list.first().map(|(d, _)| d.as_str()),
            _ => None,
        }
    }
}

/// Parses a list of assignments; the first bad one is the error.
pub fn parse_all(assignments: &[String]) -> Result<Vec<Property>, PropertyError> {
    assignments.iter().map(|a| Property::parse(a)).collect()
}

/// Checks that systemd knows each property (`supported` holds the Scope interface's
/// property names of the running systemd).
pub fn check_supported(
    properties: &[Property],
    supported: &BTreeSet<String>,
    version: &str,
) -> Result<(), PropertyError> {
    match properties
        .iter()
        .find(|p| !supported.contains(p.probe_name))
    {
        Some(p) => Err(PropertyError::Unsupported {
            name: p.name.clone(),
            version: version.to_owned(),
        }),
        None => Ok(()),
    }
}

/// The properties as StartTransientUnit / SetUnitProperties take them. Per-device entries of
/// the same property are merged into one list, as systemd appends them.
pub fn encode(properties: &[Property]) -> Result<Vec<(String, OwnedVariant)>, zbus::Error> {
    let mut merged: Vec<(String, Encoded)> = Vec::new();
    for p in properties {
        match (
            &p.encoded,
            merged.iter_mut().find(|(n, _)| *n == p.dbus_name),
        ) {
            (Encoded::Devices(more), Some((_, Encoded::Devices(list)))) => {
                for entry in more {
                    list.retain(|(d, _)| *d != entry.0);
                    list.push(entry.clone());
                }
            }
            (value, Some((_, existing))) => *existing = value.clone(),
            (value, None) => merged.push((p.dbus_name.clone(), value.clone())),
        }
    }
    merged
        .into_iter()
        .map(|(name, value)| Ok((name, value.to_variant()?)))
        .collect()
}

/// A definition's assignments after `berth set`: each new property replaces the earlier one
/// of the same name (for per-device properties, of the same name and device).
pub fn merge(existing: &[String], new: &[Property]) -> Vec<String> {
    let mut out: Vec<String> = existing.to_vec();
    for p in new {
        out.retain(|assignment| match Property::parse(assignment) {
            Ok(old) => !(old.name == p.name && old.device() == p.device()),
            Err(_) => true,
        });
        out.push(p.assignment());
    }
    out
}

fn parse_weight(value: &str, idle_allowed: bool) -> Result<u64, String> {
    if idle_allowed && value == "idle" {
        return Ok(0);
    }
    match value.parse::<u64>() {
        Ok(w) if (1..=10_000).contains(&w) => Ok(w),
        _ => Err(format!(
            "expected a weight from 1 to 10000{}",
            if idle_allowed { " or 'idle'" } else { "" }
        )),
    }
}

/// `NN%` → µs of CPU time per second (100% = one CPU); `infinity` or empty → no quota.
fn parse_cpu_quota(value: &str) -> Result<u64, String> {
    if value.is_empty() || value == "infinity" {
        return Ok(u64::MAX);
    }
    let why = || "expected a percentage of one CPU such as 20% or 150%".to_owned();
    let percent = value.strip_suffix('%').ok_or_else(why)?;
    let permyriad = parse_permyriad(percent).ok_or_else(why)?;
    if permyriad == 0 {
        return Err("the quota must be above 0%".into());
    }
    // 1% is 10 ms of CPU time per second: 100 µs per permyriad.
    permyriad
        .checked_mul(100)
        .ok_or_else(|| format!("the quota {value} is too large"))
}

/// "12.5" (percent) → 1250 permyriad.
fn parse_permyriad(percent: &str) -> Option<u64> {
    let (whole, fraction) = percent.split_once('.').unwrap_or((percent, ""));
    if whole.is_empty() || fraction.len() > 2 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: u64 = whole.parse().ok()?;
    let fraction: u64 = format!("{fraction:0<2}").parse().ok()?;
    whole.checked_mul(100)?.checked_add(fraction)
}

/// `N%` (0-100) → systemd's UINT32 scale.
fn parse_percent_scale(percent: &str) -> Result<u32, String> {
    match parse_permyriad(percent) {
        Some(p) if p <= 10_000 => {
            Ok(u32::try_from(p * u64::from(u32::MAX) / 10_000).unwrap_or(u32::MAX))
        }
        _ => Err("expected a percentage from 0% to 100%".into()),
    }
}

/// A size in bytes as systemd writes it (`1G`, `512M`; K, M, G, T are powers of 1024).
pub fn parse_bytes(value: &str) -> Result<u64, String> {
    match parse_size(value, 1024) {
        Ok(u64::MAX) => Err("expected a size such as 512M or 2G".into()),
        other => other,
    }
}

/// Sizes as systemd parses them: `1G`, `512M`, `1.5K`, plain bytes, `infinity`.
fn parse_size(value: &str, base: u64) -> Result<u64, String> {
    if value == "infinity" {
        return Ok(u64::MAX);
    }
    let why = || {
        format!(
            "expected a size such as 512M, 2G or {} bytes, or infinity",
            if base == 1024 { "1048576" } else { "1000000" }
        )
    };
    let split = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let (number, suffix) = value.split_at(split);
    let exponent = match suffix.trim() {
        "" | "B" => 0,
        "K" => 1,
        "M" => 2,
        "G" => 3,
        "T" => 4,
        "P" => 5,
        "E" => 6,
        _ => return Err(why()),
    };
    let factor = base.pow(exponent);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() {
        return Err(why());
    }
    let whole: u64 = whole.parse().map_err(|_| why())?;
    let mut bytes = whole.checked_mul(factor).ok_or_else(why)?;
    if !fraction.is_empty() {
        let digits = u32::try_from(fraction.len()).map_err(|_| why())?;
        let frac: u64 = fraction.parse().map_err(|_| why())?;
        let scale = 10u64.checked_pow(digits).ok_or_else(why)?;
        bytes = bytes
            .checked_add(frac.checked_mul(factor).ok_or_else(why)? / scale)
            .ok_or_else(why)?;
    }
    if bytes == u64::MAX {
        return Err(why());
    }
    Ok(bytes)
}

fn parse_count(value: &str) -> Result<u64, String> {
    if value == "infinity" {
        return Ok(u64::MAX);
    }
    match value.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("expected a number of tasks above 0, N%, or infinity".into()),
    }
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value {
        "yes" | "true" | "on" | "1" => Ok(true),
        "no" | "false" | "off" | "0" => Ok(false),
        _ => Err("expected yes or no".into()),
    }
}

/// `0-3,6 8` → a bitmask, byte 0 holding CPUs 0-7.
fn parse_cpu_set(value: &str) -> Result<Vec<u8>, String> {
    let why = || "expected CPU numbers and ranges such as 0-3,6".to_owned();
    let mut bytes = Vec::new();
    for part in value.split([',', ' ']).filter(|p| !p.is_empty()) {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a, b),
            None => (part, part),
        };
        let first: usize = first.parse().map_err(|_| why())?;
        let last: usize = last.parse().map_err(|_| why())?;
        if first > last || last >= 8192 {
            return Err(why());
        }
        for cpu in first..=last {
            if bytes.len() <= cpu / 8 {
                bytes.resize(cpu / 8 + 1, 0);
            }
            bytes[cpu / 8] |= 1 << (cpu % 8);
        }
    }
    Ok(bytes)
}

/// `/dev/vda 200` → ("/dev/vda", "200"). The device must be an absolute path.
fn split_device(value: &str) -> Result<(String, &str), String> {
    let (device, rest) = value
        .split_once(char::is_whitespace)
        .ok_or("expected 'DEVICE VALUE', e.g. '/dev/vda 200'")?;
    if !device.starts_with('/') || device.split('/').any(|c| c == "..") {
        return Err(format!("device '{device}' is not an absolute path"));
    }
    Ok((device.to_owned(), rest.trim()))
}

/// systemd time spans: `25ms`, `1s`, `2min`, `1.5s`, `500us`; a plain number is seconds.
fn parse_timespan_usec(value: &str) -> Result<u64, String> {
    let why = || "expected a time span such as 25ms, 1s or 2min".to_owned();
    let split = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let factor: u64 = match unit.trim() {
        "" | "s" | "sec" => 1_000_000,
        "ms" | "msec" => 1_000,
        "us" | "usec" | "µs" => 1,
        "m" | "min" => 60_000_000,
        "h" | "hr" => 3_600_000_000,
        _ => return Err(why()),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let whole: u64 = whole.parse().map_err(|_| why())?;
    let mut usec = whole.checked_mul(factor).ok_or_else(why)?;
    if !fraction.is_empty() {
        let digits = u32::try_from(fraction.len()).map_err(|_| why())?;
        let frac: u64 = fraction.parse().map_err(|_| why())?;
        usec += frac * factor / 10u64.checked_pow(digits).ok_or_else(why)?;
    }
    Ok(usec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(text: &str) -> (String, Encoded) {
        let p = Property::parse(text).expect(text);
        (p.dbus_name, p.encoded)
    }

    #[test]
    fn each_property_gets_systemds_name_and_type() {
        assert_eq!(
            encoded("CPUWeight=200"),
            ("CPUWeight".into(), Encoded::U64(200))
        );
        assert_eq!(
            encoded("CPUWeight=idle"),
            ("CPUWeight".into(), Encoded::U64(0))
        );
        assert_eq!(
            encoded("CPUQuota=20%"),
            ("CPUQuotaPerSecUSec".into(), Encoded::U64(200_000))
        );
        assert_eq!(
            encoded("CPUQuota=150%"),
            ("CPUQuotaPerSecUSec".into(), Encoded::U64(1_500_000))
        );
        assert_eq!(
            encoded("AllowedCPUs=0-3,9"),
            ("AllowedCPUs".into(), Encoded::Bytes(vec![0x0f, 0x02]))
        );
        assert_eq!(
            encoded("IOWeight=50"),
            ("IOWeight".into(), Encoded::U64(50))
        );
        assert_eq!(
            encoded("IODeviceWeight=/dev/vda 200"),
            (
                "IODeviceWeight".into(),
                Encoded::Devices(vec![("/dev/vda".into(), 200)])
            )
        );
        assert_eq!(
            encoded("IOReadBandwidthMax=/dev/vda 5M"),
            (
                "IOReadBandwidthMax".into(),
                Encoded::Devices(vec![("/dev/vda".into(), 5_000_000)])
            )
        );
        assert_eq!(
            encoded("IOWriteIOPSMax=/dev/vda 1K"),
            (
                "IOWriteIOPSMax".into(),
                Encoded::Devices(vec![("/dev/vda".into(), 1000)])
            )
        );
        assert_eq!(
            encoded("IODeviceLatencyTargetSec=/dev/vda 25ms"),
            (
                "IODeviceLatencyTargetUSec".into(),
                Encoded::Devices(vec![("/dev/vda".into(), 25_000)])
            )
        );
        assert_eq!(
            encoded("MemoryMax=1G"),
            ("MemoryMax".into(), Encoded::U64(1 << 30))
        );
        assert_eq!(
            encoded("MemoryHigh=1.5K"),
            ("MemoryHigh".into(), Encoded::U64(1536))
        );
        assert_eq!(
            encoded("MemorySwapMax=infinity"),
            ("MemorySwapMax".into(), Encoded::U64(u64::MAX))
        );
        assert_eq!(
            encoded("MemoryMax=50%"),
            ("MemoryMaxScale".into(), Encoded::U32(u32::MAX / 2))
        );
        assert_eq!(
            encoded("TasksMax=100"),
            ("TasksMax".into(), Encoded::U64(100))
        );
        assert_eq!(
            encoded("TasksMax=10%"),
            ("TasksMaxScale".into(), Encoded::U32(429_496_729))
        );
        assert_eq!(
            encoded("MemoryAccounting=yes"),
            ("MemoryAccounting".into(), Encoded::Bool(true))
        );
    }

    #[test]
    fn bad_values_name_the_property() {
        for bad in [
            "CPUWeight=0",
            "CPUWeight=20000",
            "IOWeight=idle",
            "CPUQuota=20",
            "CPUQuota=0%",
            // Found by the fuzzer: the µs per second overflowed (a panic in debug builds).
            "CPUQuota=5088888888888888888%",
            "MemoryMax=lots",
            "MemoryMax=1Q",
            "MemoryMax=101%",
            "TasksMax=-1",
            "IODeviceWeight=vda 200",
            "IODeviceWeight=/dev/vda",
            "IOReadBandwidthMax=/dev/vda fast",
            "AllowedCPUs=3-1",
            "IODeviceLatencyTargetSec=/dev/vda soon",
        ] {
            let err = Property::parse(bad).expect_err(bad);
            let name = bad.split('=').next().unwrap_or_default();
            assert!(err.to_string().starts_with(name), "{bad}: {err}");
        }
        let unknown = Property::parse("Bogus=1").expect_err("unknown");
        assert!(
            unknown.to_string().contains("unknown property 'Bogus'"),
            "{unknown}"
        );
        assert!(matches!(
            Property::parse("MemoryMax"),
            Err(PropertyError::Syntax(_))
        ));
    }

    #[test]
    fn device_entries_merge_and_types_encode() {
        let props = parse_all(&[
            "IODeviceWeight=/dev/vda 100".into(),
            "IODeviceWeight=/dev/vdb 300".into(),
            "IODeviceWeight=/dev/vda 200".into(),
            "MemoryMax=1G".into(),
            "MemoryMax=2G".into(),
        ])
        .expect("parse");
        let encoded = encode(&props).expect("encode");
        assert_eq!(encoded.len(), 2);
        assert_eq!(encoded[0].0, "IODeviceWeight");
        assert_eq!(encoded[0].1.value_signature().to_string(), "a(st)");
        let list: Vec<(String, u64)> = encoded[0]
            .1
            .try_clone()
            .expect("clone")
            .try_into()
            .expect("a(st)");
        assert_eq!(
            list,
            vec![("/dev/vdb".into(), 300), ("/dev/vda".into(), 200)]
        );
        assert_eq!(encoded[1].1.value_signature().to_string(), "t");
        let max: u64 = encoded[1]
            .1
            .try_clone()
            .expect("clone")
            .try_into()
            .expect("t");
        assert_eq!(max, 2 << 30);
    }

    #[test]
    fn set_replaces_the_same_property_and_device() {
        let existing = vec![
            "CPUWeight=50".to_owned(),
            "IODeviceWeight=/dev/vda 100".to_owned(),
            "IODeviceWeight=/dev/vdb 100".to_owned(),
        ];
        let new = parse_all(&["CPUWeight=80".into(), "IODeviceWeight=/dev/vdb 300".into()])
            .expect("parse");
        assert_eq!(
            merge(&existing, &new),
            [
                "IODeviceWeight=/dev/vda 100",
                "CPUWeight=80",
                "IODeviceWeight=/dev/vdb 300"
            ]
        );
    }

    #[test]
    fn support_is_checked_against_systemds_properties() {
        let props = parse_all(&["CPUQuota=20%".into()]).expect("parse");
        let mut supported = BTreeSet::new();
        let err = check_supported(&props, &supported, "252").expect_err("unsupported");
        assert!(
            err.to_string()
                .contains("CPUQuota is not supported by this systemd (version 252)")
        );
        supported.insert("CPUQuotaPerSecUSec".to_owned());
        assert_eq!(check_supported(&props, &supported, "252"), Ok(()));
    }
}
