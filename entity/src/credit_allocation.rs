//! What a spend took from each grant: a spend's amount is its allowance part plus the sum of
//! its allocations (a spend with none was paid by the allowance alone).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "credit_allocation")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub tenant_id: Uuid,
    /// The ledger row (a spend).
    #[sea_orm(primary_key, auto_increment = false)]
    pub credit_id: Uuid,
    #[sea_orm(primary_key, auto_increment = false)]
    pub grant_id: Uuid,
    pub amount: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
