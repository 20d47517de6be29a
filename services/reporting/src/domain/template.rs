//! Report templates: the one template for a study's modality and body
//! part gives its report a title and section headings in the contract's
//! language, and coded fields whose values come from a list. A draft's
//! fields are checked as it is saved; a required field must be in the
//! version signed.

use std::collections::BTreeMap;

/// A template as reporting decides by it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    pub name: String,
    pub modalities: Vec<String>,
    pub body_parts: Vec<String>,
    pub titles: BTreeMap<String, String>,
    pub findings: BTreeMap<String, String>,
    pub impression: BTreeMap<String, String>,
    pub fields: Vec<Field>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub titles: BTreeMap<String, String>,
    pub values: Vec<String>,
    pub required: bool,
}

/// A field's value that the template does not take, or one it lacks.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    /// "fields.<name>".
    pub field: String,
    pub reason: String,
}

/// `text` in `language`: the exact tag, else its language alone ("en" for
/// "en-IE"), else English, else any.
pub fn in_language<'t>(texts: &'t BTreeMap<String, String>, language: &str) -> Option<&'t str> {
    let base = language.split('-').next().unwrap_or(language);
    texts
        .get(language)
        .or_else(|| texts.get(base))
        .or_else(|| texts.get("en"))
        .or_else(|| texts.values().next())
        .map(String::as_str)
}

impl Template {
    /// The template for a study of `modality` and `body_part`: one that
    /// names the body part, else one for any body part of the modality.
    pub fn for_study<'t>(templates: &'t [Template], modality: &str, body_part: &str) -> Option<&'t Template> {
        let of_modality = || templates.iter().filter(|t| t.modalities.iter().any(|m| m == modality));
        of_modality()
            .find(|t| t.body_parts.iter().any(|b| b == body_part))
            .or_else(|| of_modality().find(|t| t.body_parts.is_empty()))
    }

    /// Checks a draft's `fields`: each one of the template's, each value
    /// one of its list.
    pub fn check(&self, fields: &BTreeMap<String, String>) -> Result<(), FieldError> {
        for (name, value) in fields {
            let Some(field) = self.fields.iter().find(|f| f.name == *name) else {
                let known: Vec<&str> = self.fields.iter().map(|f| f.name.as_str()).collect();
                return Err(FieldError {
                    field: format!("fields.{name}"),
                    reason: format!("not a field of template {} ({})", self.name, known.join(", ")),
                });
            };
            if !field.values.contains(value) {
                return Err(FieldError {
                    field: format!("fields.{name}"),
                    reason: format!("{value:?} is not in template {}'s list ({})", self.name, field.values.join(", ")),
                });
            }
        }
        Ok(())
    }

    /// The first required field that `present` lacks.
    pub fn missing(&self, present: &[String]) -> Option<FieldError> {
        let field = self.fields.iter().find(|f| f.required && !present.contains(&f.name))?;
        Some(FieldError {
            field: format!("fields.{}", field.name),
            reason: format!("template {} needs it before the report is signed", self.name),
        })
    }
}

/// A checked draft's fields with no template: none may be given.
pub fn no_template(fields: &BTreeMap<String, String>) -> Result<(), FieldError> {
    match fields.keys().next() {
        None => Ok(()),
        Some(name) => Err(FieldError {
            field: format!("fields.{name}"),
            reason: "no template is configured for this study's modality and body part: it takes no coded fields"
                .into(),
        }),
    }
}
