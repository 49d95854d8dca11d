"""``/v1/banks``: the litmus banks the ULP detector can judge models with."""

from fastapi import APIRouter

from schemas.api import BanksPublic
from service.api.deps import CallerDep
from service.banks import list_banks

router = APIRouter(prefix="/v1/banks", tags=["banks"])


@router.get("", response_model=BanksPublic, summary="List the litmus banks")
def read_banks(_caller: CallerDep) -> BanksPublic:
    banks = list_banks()
    return BanksPublic(data=banks, count=len(banks))
