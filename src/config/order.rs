//! The file's order, so that problems are listed as a reader meets them.

use super::validate::join;
use std::collections::HashMap;

/// Where each key path appears in the file, so that problems are listed in the file's order.
pub(super) struct FileOrder {
    /// Key path -> (its position, the position of the last key inside it).
    at: HashMap<String, (usize, usize)>,
}

impl FileOrder {
    pub(super) fn of(root: &toml::Table) -> Self {
        fn walk(value: &toml::Value, path: String, at: &mut HashMap<String, (usize, usize)>) {
            let first = at.len();
            at.insert(path.clone(), (first, first));
            match value {
                toml::Value::Table(t) => {
                    for (key, item) in t {
                        walk(item, join(&path, key), at);
                    }
                }
                toml::Value::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        walk(item, format!("{path}[{i}]"), at);
                    }
                }
                _ => {}
            }
            let last = at.len() - 1;
            at.insert(path, (first, last));
        }
        let mut at = HashMap::new();
        for (key, value) in root {
            walk(value, key.clone(), &mut at);
        }
        FileOrder { at }
    }

    /// A key in the file sorts where it is; a key that is not (missing, or a default) sorts
    /// after the keys of its nearest enclosing table that is; a section absent from the file
    /// sorts last. Ties keep the validator's order.
    pub(super) fn rank(&self, path: &str) -> (usize, usize) {
        if let Some((first, _)) = self.at.get(path) {
            return (*first, 0);
        }
        let mut p = path;
        while let Some(i) = p.rfind(['.', '[']) {
            p = &p[..i];
            if let Some((_, last)) = self.at.get(p) {
                return (*last, 1);
            }
        }
        (usize::MAX, 0)
    }
}
