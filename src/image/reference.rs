//! Naming an image: `NAME` (its newest version, or the unversioned image of that name) or
//! `NAME@VERSION`.

use std::fmt;

use super::ImageError;
use super::version;
use crate::name;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub name: String,
    pub version: Option<String>,
}

impl ImageRef {
    pub fn parse(text: &str) -> Result<Self, ImageError> {
        let (name, version) = version::parse_reference(text)?;
        name::validate("image", &name)?;
        if name.ends_with(".v") {
            return Err(ImageError::ReservedName(name));
        }
        if let Some(v) = &version {
            version::validate(v)?;
        }
        Ok(Self { name, version })
    }

    /// `name` with `version` when it is not empty.
    pub fn new(name: &str, version: &str) -> Result<Self, ImageError> {
        if version.is_empty() {
            Self::parse(name)
        } else {
            Self::parse(&format!("{name}@{version}"))
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.version {
            Some(v) => write!(f, "{}@{v}", self.name),
            None => write!(f, "{}", self.name),
        }
    }
}
