"""`situation mcp`: a Model Context Protocol server over stdio (the official `mcp` SDK).

It offers the resource ``schema`` (this dialect's SQL API, as `situation schema`
prints it) and the tool ``query`` (one read-only SQL statement, JSON rows). What
makes it read-only is in :mod:`situation.store.readonly`. stdout carries the protocol;
logs go to stderr.
"""

from __future__ import annotations

import structlog

from situation import __version__
from situation.store.readonly import QueryRefused, rows_json
from situation.schema import resource_uri, schema_text

log = structlog.get_logger("situation.mcp")

SERVER_NAME = "situation"
TOOL_NAME = "query"
RESOURCE_NAME = "schema"


def build_server(reader):
    """The MCP server answering from ``reader`` (a SqliteReader or PostgresReader)."""
    import mcp_types as types
    from mcp.server.lowlevel import Server
    from mcp.shared.exceptions import MCPError

    dialect = reader.dialect
    schema = schema_text(dialect)
    uri = resource_uri(dialect)

    async def list_resources(_ctx, _params) -> types.ListResourcesResult:
        return types.ListResourcesResult(resources=[types.Resource(
            name=RESOURCE_NAME,
            title="Situation schema",
            description=f"Database SQL schema ({dialect}): the tables the query tool reads",
            uri=uri,
            mime_type="text/plain",
            size=len(schema.encode("utf-8")),
        )])

    async def read_resource(_ctx, params) -> types.ReadResourceResult:
        if str(params.uri) != uri:
            raise MCPError(types.INVALID_PARAMS, f"unknown resource {params.uri}; the schema is {uri}")
        return types.ReadResourceResult(contents=[types.TextResourceContents(uri=uri, mime_type="text/plain", text=schema)])

    async def list_tools(_ctx, _params) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[types.Tool(
            name=TOOL_NAME,
            title="Run SQL query on your infrastructure data",
            description=(
                f"Execute a read-only SQL query ({dialect} dialect, one statement), returns JSON rows. "
                f"At most {reader.max_rows} rows; the statement is stopped after {reader.timeout:g}s. "
                f"Read the resource {uri} for the tables."
            ),
            input_schema={
                "type": "object",
                "properties": {"sql": {"type": "string", "description": "One SQL statement"}},
                "required": ["sql"],
            },
            annotations=types.ToolAnnotations(
                read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False
            ),
            meta={"dialect": dialect},
        )])

    async def call_tool(_ctx, params) -> types.CallToolResult:
        if params.name != TOOL_NAME:
            return _error(types, f"unknown tool {params.name!r}; the tool is {TOOL_NAME!r}")
        sql = (params.arguments or {}).get("sql")
        if not isinstance(sql, str) or not sql.strip():
            return _error(types, "the argument sql must be a non-empty string holding one SQL statement")
        try:
            result = await reader.query(sql)
        except QueryRefused as exc:
            log.info("query refused", reason=str(exc))
            return _error(types, str(exc))
        content = [types.TextContent(type="text", text=rows_json(result.rows))]
        if result.truncated:
            content.append(types.TextContent(type="text", text=(
                f"Row limit reached: only the first {reader.max_rows} rows are shown. "
                "Narrow the query (WHERE, LIMIT, aggregates) to see the rest."
            )))
        return types.CallToolResult(content=content, meta={"truncated": result.truncated, "rows": len(result.rows)})

    return Server(
        SERVER_NAME,
        version=__version__,
        title="Situation MCP server",
        website_url="https://github.com/situation-sh/situation",
        on_list_resources=list_resources,
        on_read_resource=read_resource,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


def _error(types, message: str):
    return types.CallToolResult(content=[types.TextContent(type="text", text=f"Error: {message}")], is_error=True)


async def serve(dsn: str, *, timeout: float, max_rows: int) -> None:
    """Open the database read-only, then answer MCP requests on stdin/stdout until stdin closes."""
    from mcp.server.stdio import stdio_server

    from situation.store.readonly import open_reader

    reader = await open_reader(dsn, timeout=timeout, max_rows=max_rows)
    try:
        server = build_server(reader)
        log.info("MCP server ready on stdio", dialect=reader.dialect, timeout=timeout, max_rows=max_rows)
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())
    finally:
        await reader.close()
