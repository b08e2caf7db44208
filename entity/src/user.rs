//! A person who signs in. Emails are stored lower-cased.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "user")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    #[sea_orm(unique)]
    pub email: String,
    pub name: Option<String>,
    pub password_hash: String,
    pub created_at: DateTimeUtc,
    /// The `sub` of an external identity provider that signs this user in, if any.
    #[sea_orm(unique)]
    pub external_subject: Option<String>,
    /// When the email address was verified; `None`: never (a password sign-up). Only a
    /// verified account may be linked to an identity provider's user.
    pub email_verified_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
