-- The SQLite schema that tunery's store created (SQLAlchemy create_all) before it had migrations,
-- dumped from a database made by commit 125a5d7. Revision 0001 must build the same schema.
CREATE TABLE runs (
	id INTEGER NOT NULL, 
	name VARCHAR(255) NOT NULL, 
	path TEXT NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	config JSON NOT NULL, 
	metrics JSON NOT NULL, 
	progress JSON NOT NULL, 
	error TEXT, 
	task VARCHAR(64), 
	backbone TEXT, 
	started_at DATETIME NOT NULL, 
	finished_at DATETIME, 
	updated_at DATETIME NOT NULL, 
	host VARCHAR(255) NOT NULL, 
	pid INTEGER, 
	attempts INTEGER NOT NULL, 
	CONSTRAINT pk_runs PRIMARY KEY (id), 
	CONSTRAINT ck_runs_status CHECK (status IN ('running', 'completed', 'failed', 'interrupted')), 
	CONSTRAINT uq_runs_name UNIQUE (name)
);
CREATE INDEX ix_runs_status ON runs (status);
CREATE TABLE model_versions (
	id INTEGER NOT NULL, 
	name VARCHAR(128) NOT NULL, 
	version INTEGER NOT NULL, 
	run_path TEXT NOT NULL, 
	run_name VARCHAR(255), 
	metrics JSON NOT NULL, 
	created_at DATETIME NOT NULL, 
	CONSTRAINT pk_model_versions PRIMARY KEY (id), 
	CONSTRAINT uq_model_versions_name_version UNIQUE (name, version)
);
CREATE TABLE tenants (
	id INTEGER NOT NULL, 
	name VARCHAR(128) NOT NULL, 
	"plan" VARCHAR(64) NOT NULL, 
	created_at DATETIME NOT NULL, 
	CONSTRAINT pk_tenants PRIMARY KEY (id), 
	CONSTRAINT uq_tenants_name UNIQUE (name)
);
CREATE TABLE api_keys (
	id INTEGER NOT NULL, 
	key_id VARCHAR(32) NOT NULL, 
	secret_hash VARCHAR(64) NOT NULL, 
	tenant VARCHAR(128) NOT NULL, 
	models JSON, 
	admin BOOLEAN NOT NULL, 
	note TEXT, 
	created_at DATETIME NOT NULL, 
	revoked_at DATETIME, 
	CONSTRAINT pk_api_keys PRIMARY KEY (id), 
	CONSTRAINT uq_api_keys_key_id UNIQUE (key_id)
);
CREATE INDEX ix_api_keys_tenant ON api_keys (tenant);
CREATE TABLE usage_events (
	id INTEGER NOT NULL, 
	created_at DATETIME NOT NULL, 
	tenant VARCHAR(128) NOT NULL, 
	key_id VARCHAR(32) NOT NULL, 
	model VARCHAR(255) NOT NULL, 
	model_ref TEXT NOT NULL, 
	texts INTEGER NOT NULL, 
	tokens INTEGER NOT NULL, 
	latency_ms DOUBLE NOT NULL, 
	request_id VARCHAR(64) NOT NULL, 
	idempotency_key VARCHAR(255), 
	CONSTRAINT pk_usage_events PRIMARY KEY (id), 
	CONSTRAINT uq_usage_events_request_id UNIQUE (request_id)
);
CREATE INDEX ix_usage_events_created_at ON usage_events (created_at);
CREATE INDEX ix_usage_events_tenant ON usage_events (tenant);
CREATE TABLE quota_counters (
	id INTEGER NOT NULL, 
	tenant VARCHAR(128) NOT NULL, 
	period VARCHAR(7) NOT NULL, 
	requests INTEGER NOT NULL, 
	texts INTEGER NOT NULL, 
	tokens INTEGER NOT NULL, 
	CONSTRAINT pk_quota_counters PRIMARY KEY (id), 
	CONSTRAINT uq_quota_counters_tenant_period UNIQUE (tenant, period)
);
CREATE TABLE idempotency (
	id INTEGER NOT NULL, 
	key_id VARCHAR(32) NOT NULL, 
	idempotency_key VARCHAR(255) NOT NULL, 
	request_hash VARCHAR(64) NOT NULL, 
	response JSON NOT NULL, 
	created_at DATETIME NOT NULL, 
	CONSTRAINT pk_idempotency PRIMARY KEY (id), 
	CONSTRAINT uq_idempotency_key_id_idempotency_key UNIQUE (key_id, idempotency_key)
);
CREATE TABLE model_aliases (
	id INTEGER NOT NULL, 
	name VARCHAR(128) NOT NULL, 
	alias VARCHAR(128) NOT NULL, 
	version INTEGER NOT NULL, 
	updated_at DATETIME NOT NULL, 
	CONSTRAINT pk_model_aliases PRIMARY KEY (id), 
	CONSTRAINT uq_model_aliases_name_alias UNIQUE (name, alias), 
	CONSTRAINT fk_model_aliases_name_version_model_versions FOREIGN KEY(name, version) REFERENCES model_versions (name, version)
);
