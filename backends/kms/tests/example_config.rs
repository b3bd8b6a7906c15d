//! The documented example config and IAM policy stay in step with the code.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keyturn_backend_kms::KmsConfig;

const EXAMPLE: &str = include_str!("../../../config/keyturn.kms.example.toml");
const POLICY: &str = include_str!("../../../config/kms-iam-policy.json");

#[test]
fn example_backend_table_is_a_valid_kms_config() {
    let doc: toml::Table = toml::from_str(EXAMPLE).unwrap();
    let mut backend = doc["keyset"].as_array().unwrap()[0]["backend"]
        .as_table()
        .unwrap()
        .clone();
    assert_eq!(backend.remove("type").unwrap().as_str(), Some("kms"));
    let config: KmsConfig = backend.try_into().unwrap();
    config.validate().unwrap();
    // Every field the example sets is at its default, apart from the region.
    assert_eq!(
        config,
        KmsConfig {
            region: Some("eu-west-1".into()),
            ..KmsConfig::default()
        }
    );
    // Every field of KmsConfig is documented in the example (set or commented out).
    for field in [
        "region",
        "endpoint",
        "dynamodb_endpoint",
        "state_table",
        "create_state_table",
        "deletion_window_days",
    ] {
        assert!(EXAMPLE.contains(&format!("{field} = ")), "{field}");
    }
}

#[test]
fn unknown_fields_are_refused() {
    let err = toml::from_str::<KmsConfig>("regoin = \"eu-west-1\"").unwrap_err();
    assert!(err.to_string().contains("regoin"), "{err}");
}

#[test]
fn iam_policy_names_every_aws_action_the_backend_calls() {
    for action in [
        "kms:CreateKey",
        "kms:TagResource",
        "kms:CreateAlias",
        "kms:DeleteAlias",
        "kms:DescribeKey",
        "kms:GetPublicKey",
        "kms:Sign",
        "kms:DisableKey",
        "kms:ScheduleKeyDeletion",
        "kms:ListAliases",
        "dynamodb:DescribeTable",
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:CreateTable",
    ] {
        assert!(POLICY.contains(&format!("\"{action}\"")), "{action}");
    }
}
