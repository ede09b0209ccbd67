//! The typed helpers (`audit.project("p-42").created()`), made from the action catalog
//! that `audit_contract` holds for both kits (`audit_contract::with_catalog!`), with the
//! catalog's [`CATALOG`] and [`actions`] constants.

pub use audit_contract::catalog::{CATALOG, CatalogEntry, actions, markdown_table};

use crate::builder::EventBuilder;
use crate::client::AuditClient;
use crate::event::{Outcome, Target};

macro_rules! catalog {
    ($(
        $(#[$family_doc:meta])*
        $family:ident($target:literal) -> $Family:ident {
            $( $helper:ident => $_const:ident = $action:literal $([$outcome:ident])?, $description:literal; )+
        }
    )+) => {
        $(
            $(#[$family_doc])*
            pub struct $Family<'a> {
                client: &'a AuditClient,
                target: Target,
            }

            impl<'a> $Family<'a> {
                $(
                    #[doc = concat!("`", $action, "`: ", $description)]
                    pub fn $helper(self) -> EventBuilder<'a> {
                        EventBuilder::new(self.client, $action.to_owned())
                            .target(self.target)
                            $( .outcome(Outcome::$outcome) )?
                    }
                )+
            }

            impl AuditClient {
                $(#[$family_doc])*
                pub fn $family(&self, id: impl Into<String>) -> $Family<'_> {
                    $Family {
                        client: self,
                        target: Target::new($target, id),
                    }
                }
            }
        )+
    };
}

audit_contract::with_catalog!(catalog);
