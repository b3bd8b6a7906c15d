//! Lifecycle documents in a DynamoDB table, written with conditional puts.
//!
//! One item per key set: `keyset` (S, partition key), `version` (N), `data` (S, the JSON
//! document). The first write carries `attribute_not_exists(keyset)`, every later one
//! `version = :expected`; a failed condition is a [`BackendError::Conflict`]. Reads are
//! strongly consistent, so a read after a write always sees it.

use crate::aws_error;
use aws_sdk_dynamodb::client::Waiters;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use aws_sdk_dynamodb::Client;
use keyturn_backend::{BackendError, StateBlob};
use std::time::Duration;

const KEY: &str = "keyset";
const VERSION: &str = "version";
const DATA: &str = "data";

/// How long a freshly created table may take to become ACTIVE (seconds on AWS).
const TABLE_ACTIVE_TIMEOUT: Duration = Duration::from_secs(120);

/// The state table of one backend.
pub(crate) struct StateTable {
    client: Client,
    table: String,
}

impl StateTable {
    pub(crate) fn new(client: Client, table: String) -> Self {
        StateTable { client, table }
    }

    fn missing(&self) -> BackendError {
        BackendError::Rejected(format!(
            "the DynamoDB state table {:?} does not exist in this region: create it with the \
             partition key `keyset` (type String), or set create_state_table = true",
            self.table
        ))
    }

    /// Checks that the table exists with the right key; creates it when `create` allows.
    pub(crate) async fn ensure(&self, create: bool) -> Result<(), BackendError> {
        let described = self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await;
        let table = match described {
            Ok(out) => out.table,
            Err(e) if e.code() == Some("ResourceNotFoundException") => {
                if !create {
                    return Err(self.missing());
                }
                self.create().await?;
                return Ok(());
            }
            Err(e) => return Err(aws_error::map("DescribeTable", e)),
        };
        let key_ok = table.and_then(|t| t.key_schema).is_some_and(|schema| {
            matches!(schema.as_slice(), [k] if k.attribute_name == KEY && k.key_type == KeyType::Hash)
        });
        if !key_ok {
            return Err(BackendError::Rejected(format!(
                "the DynamoDB table {:?} exists but its key is not the single partition key \
                 `keyset` (String); point state_table at a table made for keyturn",
                self.table
            )));
        }
        Ok(())
    }

    async fn create(&self) -> Result<(), BackendError> {
        let build = |e: aws_sdk_dynamodb::error::BuildError| {
            BackendError::Rejected(format!("cannot build the CreateTable request: {e}"))
        };
        let created = self
            .client
            .create_table()
            .table_name(&self.table)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(KEY)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .map_err(build)?,
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(KEY)
                    .key_type(KeyType::Hash)
                    .build()
                    .map_err(build)?,
            )
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await;
        match created {
            Ok(_) => tracing::info!(table = %self.table, "created the DynamoDB state table"),
            // Another daemon created it first.
            Err(e) if e.code() == Some("ResourceInUseException") => {}
            Err(e) => return Err(aws_error::map("CreateTable", e)),
        }
        self.client
            .wait_until_table_exists()
            .table_name(&self.table)
            .wait(TABLE_ACTIVE_TIMEOUT)
            .await
            .map_err(|e| {
                BackendError::unavailable(
                    format!("the DynamoDB table {:?} did not become active", self.table),
                    e,
                )
            })?;
        Ok(())
    }

    pub(crate) async fn load(&self, keyset: &str) -> Result<Option<StateBlob>, BackendError> {
        let got = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(KEY, AttributeValue::S(keyset.to_owned()))
            .consistent_read(true)
            .send()
            .await;
        let item = match got {
            Ok(out) => out.item,
            Err(e) if e.code() == Some("ResourceNotFoundException") => return Err(self.missing()),
            Err(e) => return Err(aws_error::map("GetItem", e)),
        };
        let Some(item) = item else {
            return Ok(None);
        };
        let corrupt = || BackendError::Storage {
            message: format!(
                "the state item of {keyset:?} in DynamoDB table {:?} lacks a numeric `version` \
                 or a string `data`",
                self.table
            ),
            source: None,
        };
        let version = match item.get(VERSION) {
            Some(AttributeValue::N(n)) => n.parse::<u64>().map_err(|_| corrupt())?,
            _ => return Err(corrupt()),
        };
        let data = match item.get(DATA) {
            Some(AttributeValue::S(s)) => s.clone().into_bytes(),
            _ => return Err(corrupt()),
        };
        Ok(Some(StateBlob { data, version }))
    }

    pub(crate) async fn store(
        &self,
        keyset: &str,
        data: &[u8],
        expected: Option<u64>,
    ) -> Result<u64, BackendError> {
        let data = std::str::from_utf8(data)
            .map_err(|_| BackendError::Rejected("state must be UTF-8 JSON".into()))?;
        let version = expected.map_or(1, |v| v + 1);
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(KEY, AttributeValue::S(keyset.to_owned()))
            .item(VERSION, AttributeValue::N(version.to_string()))
            .item(DATA, AttributeValue::S(data.to_owned()));
        // `data` and `keyset`-like words may be reserved in expressions: always use #names.
        let put = match expected {
            None => put
                .condition_expression("attribute_not_exists(#k)")
                .expression_attribute_names("#k", KEY),
            Some(v) => put
                .condition_expression("#v = :expected")
                .expression_attribute_names("#v", VERSION)
                .expression_attribute_values(":expected", AttributeValue::N(v.to_string())),
        };
        match put.send().await {
            Ok(_) => Ok(version),
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => {
                Err(BackendError::Conflict)
            }
            Err(e) if e.code() == Some("ResourceNotFoundException") => Err(self.missing()),
            Err(e) => Err(aws_error::map("PutItem", e)),
        }
    }

    /// A cheap read that needs only the GetItem permission.
    pub(crate) async fn health(&self) -> Result<(), BackendError> {
        // "." is never a key set name, so this reads nothing and costs one read unit.
        self.load(".").await.map(|_| ())
    }
}
