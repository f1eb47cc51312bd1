//! KalamDB's scalar functions for DataFusion (sql.md §4): `SNOWFLAKE_ID()`, `UUID_V7()`,
//! `ULID()` (a new value per row) and `CURRENT_USER()` (the acting user). `NOW()` is
//! DataFusion's own, fixed per statement.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};

use crate::ids::IdGenerators;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    SnowflakeId,
    UuidV7,
    Ulid,
    CurrentUser,
}

#[derive(Debug)]
struct KalamUdf {
    kind: Kind,
    signature: Signature,
    ids: Arc<IdGenerators>,
    user: String,
}

impl PartialEq for KalamUdf {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.user == other.user && Arc::ptr_eq(&self.ids, &other.ids)
    }
}

impl Eq for KalamUdf {}

impl Hash for KalamUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.kind.hash(state);
        self.user.hash(state);
    }
}

impl ScalarUDFImpl for KalamUdf {
    fn name(&self) -> &str {
        match self.kind {
            Kind::SnowflakeId => "snowflake_id",
            Kind::UuidV7 => "uuid_v7",
            Kind::Ulid => "ulid",
            Kind::CurrentUser => "current_user",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(match self.kind {
            Kind::SnowflakeId => DataType::Int64,
            _ => DataType::Utf8,
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let n = args.number_rows;
        let array: ArrayRef = match self.kind {
            Kind::CurrentUser => return Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(self.user.clone())))),
            Kind::SnowflakeId => Arc::new((0..n).map(|_| self.ids.snowflake()).collect::<Int64Array>()),
            Kind::UuidV7 => Arc::new((0..n).map(|_| Some(self.ids.uuid_v7())).collect::<StringArray>()),
            Kind::Ulid => Arc::new((0..n).map(|_| Some(self.ids.ulid())).collect::<StringArray>()),
        };
        Ok(ColumnarValue::Array(array))
    }
}

/// The functions for one statement run by `user`.
pub fn functions(ids: &Arc<IdGenerators>, user: &str) -> Vec<ScalarUDF> {
    [Kind::SnowflakeId, Kind::UuidV7, Kind::Ulid, Kind::CurrentUser]
        .into_iter()
        .map(|kind| {
            let volatility = if kind == Kind::CurrentUser { Volatility::Stable } else { Volatility::Volatile };
            ScalarUDF::from(KalamUdf {
                kind,
                signature: Signature::exact(vec![], volatility),
                ids: ids.clone(),
                user: user.to_owned(),
            })
        })
        .collect()
}
