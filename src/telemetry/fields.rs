//! The fields of a tracing event, as text: its message and the other fields by name.

use std::collections::BTreeMap;

use tracing::field::{Field, Visit};

#[derive(Default)]
pub struct EventFields {
    pub message: String,
    pub fields: BTreeMap<String, String>,
}

impl EventFields {
    pub fn of(event: &tracing::Event<'_>) -> Self {
        let mut fields = EventFields::default();
        event.record(&mut fields);
        fields
    }
}

impl Visit for EventFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.fields.insert(field.name().to_owned(), value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.fields.insert(field.name().to_owned(), text);
        }
    }
}
