from libs.common.migrations import run_env

run_env(schema="audit")
