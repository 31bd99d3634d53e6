"""The three routes of a token a manager issues to a reader or a device (``server.meta_token``):
whether one is issued, a new one (shown once), revoke it."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response, status

from server.auth import ManagerDep
from server.deps import SessionDep, write_lock
from server.guard import errors
from server.meta_token import IssuedToken, MetaToken, TokenInfo


def add_token_routes(router: APIRouter, path: str, token: MetaToken, holder: str, use: str) -> None:
    """``GET``, ``PUT`` and ``DELETE`` ``path`` for ``token``, held by ``holder``
    ("the bureau"); ``use`` says what the new token is for."""

    def token_info(session: SessionDep, _: ManagerDep) -> TokenInfo:
        return token.info(session)

    def issue_token(session: SessionDep, actor: ManagerDep, request: Request) -> IssuedToken:
        with write_lock(request):
            issued = token.issue(session, actor)
            session.commit()
        return issued

    def revoke_token(session: SessionDep, actor: ManagerDep, request: Request) -> Response:
        with write_lock(request):
            if not token.revoke(session, actor):
                raise HTTPException(status.HTTP_404_NOT_FOUND, f"{holder} has no token")
            session.commit()
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    name = token.key
    router.add_api_route(path, token_info, methods=["GET"], response_model=TokenInfo, responses=errors(401),
                         name=f"{name}_info", description=f"Whether {holder} has a token, and who issued "
                         "it when.")
    router.add_api_route(path, issue_token, methods=["PUT"], response_model=IssuedToken,
                         responses=errors(401), name=f"{name}_issue",
                         description=f"A new token for {holder} ({use}); it replaces the one before "
                         "and is shown only in this answer.")
    router.add_api_route(path, revoke_token, methods=["DELETE"], status_code=status.HTTP_204_NO_CONTENT,
                         response_class=Response, name=f"{name}_revoke",
                         responses=errors(401, 404, e404=f"{holder[0].upper()}{holder[1:]} has no token"),
                         description=f"Revoke {holder}'s token.")
