//! Built-in Kafka policy filter: CiliumNetworkPolicy `rules.kafka` semantics.
//!
//! The host hands this filter, per (endpoint, direction, port, peer
//! identity), the groups of Kafka rules whose selector chose the peer. As in
//! Cilium, the rules of all groups form one list:
//!
//! - a rule matches a request when its API key (or the keys its `role`
//!   expands to), `apiVersion` and `clientID` match, each only if given;
//! - a matching rule without `topic` allows the request outright;
//! - rules with a `topic` allow a request that names topics only when every
//!   topic it names is some matching rule's topic; they place no constraint
//!   on requests whose kind carries no topics.
//!
//! Weir's own decisions where Cilium is silent: a request with an empty topic
//! list (Metadata asking for brokers only) is judged like one without topics;
//! a request for every topic (`all`: a null list, a `*` ACL, a group-wide API
//! such as DeleteGroups) and a request whose topics the host could not read
//! (`unknown`: topic ids, prefixed or MATCH/ANY ACL patterns, config or ACL
//! resources that are not topics) are allowed only by a rule without
//! `topic`. The host decides which topics each API names (every API it can
//! decode, not only Cilium's list: `proxy/src/kafka/codec/topics.rs`); group
//! names are not matched by any rule. A group with no rules allows everything.
//!
//! Tested as a component, through the real host: `proxy/tests/kafka_rules.rs`.

use serde::Deserialize;
use weir_filter_sdk::ConfigError;
use weir_filter_sdk::kafka::*;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyConfig {
    #[serde(default)]
    groups: Vec<GroupConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupConfig {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    rules: Vec<RuleConfig>,
}

/// Cilium's `PortRuleKafka`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RuleConfig {
    role: Option<String>,
    api_key: Option<String>,
    api_version: Option<String>,
    #[serde(rename = "clientID")]
    client_id: Option<String>,
    topic: Option<String>,
}

/// API keys by the names Cilium accepts (Kafka's names, lower case, without
/// separators), plus a few newer APIs.
const API_KEYS: &[(&str, i16)] = &[
    ("produce", 0),
    ("fetch", 1),
    ("offsets", 2),
    ("listoffsets", 2),
    ("metadata", 3),
    ("leaderandisr", 4),
    ("stopreplica", 5),
    ("updatemetadata", 6),
    ("controlledshutdown", 7),
    ("offsetcommit", 8),
    ("offsetfetch", 9),
    ("findcoordinator", 10),
    ("joingroup", 11),
    ("heartbeat", 12),
    ("leavegroup", 13),
    ("syncgroup", 14),
    ("describegroups", 15),
    ("listgroups", 16),
    ("saslhandshake", 17),
    ("apiversions", 18),
    ("createtopics", 19),
    ("deletetopics", 20),
    ("deleterecords", 21),
    ("initproducerid", 22),
    ("offsetforleaderepoch", 23),
    ("addpartitionstotxn", 24),
    ("addoffsetstotxn", 25),
    ("endtxn", 26),
    ("writetxnmarkers", 27),
    ("txnoffsetcommit", 28),
    ("describeacls", 29),
    ("createacls", 30),
    ("deleteacls", 31),
    ("describeconfigs", 32),
    ("alterconfigs", 33),
    ("alterreplicalogdirs", 34),
    ("describelogdirs", 35),
    ("saslauthenticate", 36),
    ("createpartitions", 37),
    ("deletegroups", 42),
    ("electleaders", 43),
    ("incrementalalterconfigs", 44),
    ("offsetdelete", 47),
    ("describeclientquotas", 48),
    ("createdelegationtoken", 38),
    ("renewdelegationtoken", 39),
    ("expiredelegationtoken", 40),
    ("describedelegationtoken", 41),
    ("alterpartitionreassignments", 45),
    ("listpartitionreassignments", 46),
    ("alterclientquotas", 49),
    ("describeuserscramcredentials", 50),
    ("alteruserscramcredentials", 51),
    ("describequorum", 55),
    ("updatefeatures", 57),
    ("describecluster", 60),
    ("describeproducers", 61),
    ("describetransactions", 65),
    ("listtransactions", 66),
    ("consumergroupheartbeat", 68),
    // Kafka 4's admin client asks this first when describing a group (and
    // takes a refusal as the answer: it falls back to DescribeGroups only on
    // UNSUPPORTED_VERSION)
    ("consumergroupdescribe", 69),
    ("gettelemetrysubscriptions", 71),
    ("pushtelemetry", 72),
    ("listconfigresources", 74),
    ("describetopicpartitions", 75),
    ("sharegroupheartbeat", 76),
    ("sharegroupdescribe", 77),
    ("sharefetch", 78),
    ("shareacknowledge", 79),
    ("describesharegroupoffsets", 90),
    ("altersharegroupoffsets", 91),
    ("deletesharegroupoffsets", 92),
];

/// Cilium's role expansion, plus InitProducerId for `produce` when it asks
/// for an idempotent producer id (no transactional id): every current
/// client (Java 3.0+, librdkafka with enable.idempotence, kafka-python 3)
/// sends it before its first Produce, and Kafka's own ACLs let a principal
/// that may write a topic do it (KIP-679).
///
/// Both roles also cover DescribeTopicPartitions (75), which tells of the
/// named topics what Metadata does (KIP-966; Kafka 4's admin client
/// describes topics with it) and which Kafka's ACLs allow alike.
const PRODUCE_ROLE: &[i16] = &[0, 3, 18, INIT_PRODUCER_ID, DESCRIBE_TOPIC_PARTITIONS];
const INIT_PRODUCER_ID: i16 = 22;
const DESCRIBE_TOPIC_PARTITIONS: i16 = 75;
const CONSUME_ROLE: &[i16] = &[1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 18, DESCRIBE_TOPIC_PARTITIONS];

const MAX_TOPIC_LEN: usize = 255;

/// The name of an API key, for messages (`produce`, `fetch`, or the number).
pub fn api_key_name(key: i16) -> String {
    API_KEYS.iter().find(|(_, k)| *k == key).map_or_else(|| key.to_string(), |(name, _)| name.to_string())
}

struct Rule {
    group: usize,
    /// From `role: produce`: InitProducerId only without a transactional id.
    idempotent_only: bool,
    /// Empty: every key.
    api_keys: Vec<i16>,
    api_version: Option<i16>,
    client_id: Option<String>,
    topic: Option<String>,
}

impl Rule {
    fn matches(&self, request: &Request) -> bool {
        (self.api_keys.is_empty() || self.api_keys.contains(&request.api_key))
            && !(self.idempotent_only && request.api_key == INIT_PRODUCER_ID && request.transactional_id.is_some())
            && self.api_version.is_none_or(|v| v == request.api_version)
            && self.client_id.as_deref().is_none_or(|c| request.client_id.as_deref() == Some(c))
    }
}

pub struct KafkaPolicy {
    group_names: Vec<Option<String>>,
    /// Groups without rules: they allow every request.
    open_group: Option<usize>,
    rules: Vec<Rule>,
}

impl KafkaPolicy {
    pub fn compile(config: &str) -> Result<Self, ConfigError> {
        let parsed: PolicyConfig =
            serde_json::from_str(config).map_err(|e| ConfigError::new(format!("kafka-policy config: {e}")))?;
        let mut policy = KafkaPolicy { group_names: Vec::new(), open_group: None, rules: Vec::new() };
        for (g, group) in parsed.groups.into_iter().enumerate() {
            let label = group.name.clone();
            if group.rules.is_empty() && policy.open_group.is_none() {
                policy.open_group = Some(g);
            }
            for (i, rule) in group.rules.into_iter().enumerate() {
                let at = |field: &str, message: String| {
                    ConfigError::at(format!("kafka[{i}].{field}"), message).in_group(label.as_deref())
                };
                let api_keys = match (&rule.role, &rule.api_key) {
                    (Some(_), Some(_)) => return Err(at("apiKey", "role and apiKey cannot both be set".into())),
                    (Some(role), None) => match role.to_ascii_lowercase().as_str() {
                        "produce" => PRODUCE_ROLE.to_vec(),
                        "consume" => CONSUME_ROLE.to_vec(),
                        _ => return Err(at("role", format!("unknown role {role:?}; use produce or consume"))),
                    },
                    (None, Some(key)) => {
                        let lower = key.to_ascii_lowercase();
                        match API_KEYS.iter().find(|(name, _)| *name == lower) {
                            Some((_, k)) => vec![*k],
                            None => return Err(at("apiKey", format!("unknown Kafka API key {key:?}"))),
                        }
                    }
                    (None, None) => Vec::new(),
                };
                let api_version = match &rule.api_version {
                    None => None,
                    Some(text) => match text.parse::<i16>() {
                        Ok(v) if v >= 0 => Some(v),
                        _ => return Err(at("apiVersion", format!("{text:?} is not a version (0-32767)"))),
                    },
                };
                if let Some(topic) = &rule.topic {
                    if topic.len() > MAX_TOPIC_LEN {
                        return Err(at("topic", format!("longer than {MAX_TOPIC_LEN} characters")));
                    }
                    if topic.is_empty() || !topic.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
                        return Err(at(
                            "topic",
                            format!("{topic:?} is not a topic name (a-z, A-Z, 0-9, '.', '_', '-')"),
                        ));
                    }
                }
                let idempotent_only = rule.role.as_deref().is_some_and(|r| r.eq_ignore_ascii_case("produce"));
                policy.rules.push(Rule {
                    group: g,
                    idempotent_only,
                    api_keys,
                    api_version,
                    client_id: rule.client_id.filter(|c| !c.is_empty()),
                    topic: rule.topic,
                });
            }
            policy.group_names.push(group.name);
        }
        Ok(policy)
    }

    /// `Ok(what allowed it)` or `Err(why not)`.
    pub fn judge(&self, request: &Request) -> Result<Option<&str>, String> {
        let name = |g: usize| self.group_names.get(g).and_then(|n| n.as_deref());
        if let Some(g) = self.open_group {
            return Ok(name(g));
        }
        let matching: Vec<&Rule> = self.rules.iter().filter(|r| r.matches(request)).collect();
        let Some(first) = matching.first() else {
            return Err(format!(
                "no Kafka rule allows {} v{} from client {:?}",
                api_key_name(request.api_key),
                request.api_version,
                request.client_id.as_deref().unwrap_or("")
            ));
        };
        if let Some(open) = matching.iter().find(|r| r.topic.is_none()) {
            return Ok(name(open.group));
        }
        match &request.topics {
            Topics::None => Ok(name(first.group)),
            Topics::Named(topics) => {
                for topic in topics {
                    if !matching.iter().any(|r| r.topic.as_deref() == Some(topic.as_str())) {
                        return Err(format!(
                            "no Kafka rule allows topic {topic:?} for {}",
                            api_key_name(request.api_key)
                        ));
                    }
                }
                Ok(name(first.group))
            }
            Topics::All => {
                Err(format!("{} for every topic: the rules allow only named topics", api_key_name(request.api_key)))
            }
            Topics::Unknown => Err(format!(
                "{} v{}: weir cannot read which topics this request touches (topic ids, ACL patterns, resources \
                 that are not topics), and the rules allow only named topics",
                api_key_name(request.api_key),
                request.api_version
            )),
        }
    }
}

impl KafkaFilter for KafkaPolicy {
    fn configure(config: &str) -> Result<Self, String> {
        Ok(KafkaPolicy::compile(config)?)
    }

    fn on_request(&self, _conn: &Connection, request: &Request) -> RequestDecision {
        match self.judge(request) {
            Ok(matched) => allow(matched.map(str::to_string)),
            Err(reason) => deny(reason),
        }
    }
}

weir_filter_sdk::kafka_filter!(KafkaPolicy);
