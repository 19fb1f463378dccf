//! The built-in plugin types, by name.

use super::PluginType;

static TYPES: &[&dyn PluginType] = &[
    &super::ping::PingType,
    &super::exec::ExecType,
    &super::space::SpaceType,
    &super::guard::GuardType,
    &super::github::GithubType,
    &super::media::MediaType,
];

/// The plugin type registered under `name`.
pub fn lookup(name: &str) -> Option<&'static dyn PluginType> {
    TYPES.iter().copied().find(|t| t.name() == name)
}

/// All registered type names.
pub fn known_types() -> Vec<&'static str> {
    TYPES.iter().map(|t| t.name()).collect()
}

#[cfg(test)]
mod tests {
    /// The NixOS module asserts an instance's type against its own list: it must name every built-in type.
    #[test]
    fn the_nixos_module_knows_every_type() {
        let module = include_str!("../../nixos-modules/maubot.nix");
        let start = module.find("knownTypes = [").expect("the module has knownTypes");
        let list = &module[start..start + module[start..].find("];").unwrap()];
        let named: Vec<&str> = list.split('"').skip(1).step_by(2).collect();
        assert_eq!(named, super::known_types(), "nixos-modules/maubot.nix knownTypes");
    }
}
