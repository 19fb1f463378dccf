//! The built-in plugin types, by name.

use super::PluginType;

static TYPES: &[&dyn PluginType] =
    &[&super::ping::PingType, &super::exec::ExecType, &super::space::SpaceType, &super::guard::GuardType];

/// The plugin type registered under `name`.
pub fn lookup(name: &str) -> Option<&'static dyn PluginType> {
    TYPES.iter().copied().find(|t| t.name() == name)
}

/// All registered type names.
pub fn known_types() -> Vec<&'static str> {
    TYPES.iter().map(|t| t.name()).collect()
}
