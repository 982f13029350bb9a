//! The values of a recipe's options: a flag as given, and for a sweep (the `[train]` options a
//! recipe gives as lists) its axes, their values, and how a setting (one value per axis) names
//! its stages and report rows.

/// A recipe key, the flag it becomes, and its value as given (a switch has none).
#[derive(Debug, Clone, PartialEq)]
pub struct Flag {
    pub key: String,
    pub flag: String,
    pub value: Option<String>,
}

/// A section's flags in the recipe's (sorted) key order.
pub type Flags = Vec<Flag>;

/// One swept option and its values.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    pub key: String,
    pub values: Vec<Setting>,
}

/// One value of a swept option: how stage names and labels show it, and its flag (`None`: a
/// switch set to false, left out).
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    pub label: String,
    pub flag: Option<Flag>,
}

/// ` (lr 0.004, r 16)`: how a setting extends a model's label; empty without a sweep.
pub fn setting_label(setting: &[(&str, &Setting)]) -> String {
    if setting.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = setting
        .iter()
        .map(|(k, s)| format!("{k} {}", s.label))
        .collect();
    format!(" ({})", parts.join(", "))
}
